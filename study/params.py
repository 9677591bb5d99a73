"""The searched hyperparameters, each declared once: its name, where its value lives in a RunConfig,
how the sampler draws it, its domain (the HParams column) and its text in the table.

Everything else is derived from :data:`PARAMS`: the Optuna define-by-run function
(:class:`DefineByRun`), a trial's config (:func:`apply_params`), its HParams row
(:func:`trial_hparams`), the study's HParams columns (:func:`study_hparams`) and the table's
"best config" (:func:`describe`).

Names use ``/`` so Tune nests them (``curriculum/loss_0`` -> ``config["curriculum"]["loss_0"]``);
``{k}`` in a name is the curriculum layer. A layer's weight is conditional on the loss sampled for
it (MSE, PKT and cosine losses live on different scales, so each loss has its own log-uniform
range): the sampler names it ``curriculum/weight_<k>_<loss>``, the HParams column
``curriculum/weight_<k>``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from indistill.config.run import RunConfig, config_to_dict, deep_merge
from indistill.engine.configure import build_config, validate_config

from .names import WIDTH as WIDTH_NAME
from .search_space import SearchSpace, weight_ranges, with_width


@dataclass(frozen=True)
class Domain:
    """A hyperparameter's values as the HParams dashboard shows them: discrete ``values`` (strings or
    bools) or an ``interval`` (numbers)."""

    name: str
    values: tuple = ()
    interval: tuple[float, float] | None = None
    description: str = ""

    @property
    def differs(self) -> bool:
        """Whether the search varies it (the dashboard lists these first)."""
        if self.interval is not None:
            return self.interval[0] < self.interval[1]
        return len(set(self.values)) > 1

    def merged(self, other: "Domain") -> "Domain":
        """One domain holding both (the same name in another benchmark's search)."""
        if self.interval is not None and other.interval is not None:
            return dataclasses.replace(self, interval=(min(self.interval[0], other.interval[0]),
                                                       max(self.interval[1], other.interval[1])))
        return dataclasses.replace(self, values=tuple(dict.fromkeys((*self.values, *other.values))))


def _interval(low: float, high: float, description: str) -> Domain:
    return Domain("", interval=(float(low), float(high)), description=description)


def _discrete(values: Iterable, description: str) -> Domain:
    return Domain("", values=tuple(dict.fromkeys(values)), description=description)


#: the values drawn so far in one trial, by name (``curriculum/loss_0``)
Drawn = dict[str, Any]


@dataclass(frozen=True)
class Param:
    """One hyperparameter of the study's search."""

    #: its name in the HParams dashboard and in the sampler (unless ``sampled_as`` says otherwise)
    column: str
    #: where its value lives in a RunConfig (a per-layer list for a ``{k}`` parameter)
    path: tuple[str, ...]
    #: its type: how a sampled or read value is converted
    kind: Callable[[Any], Any]
    #: its text in the table's "best config"
    text: Callable[[Any], str]
    #: its domain in the study (the search space, else the base config's value), for HParams
    domain: Callable[[SearchSpace, RunConfig, int], Domain]
    #: how the sampler draws it (``trial, name, space, k, drawn``); returns None where the space
    #: fixes it; None: a column the search never varies
    suggest: Callable[[Any, str, SearchSpace, int, Drawn], Any] | None = None
    #: its sampler name where that is not ``column`` (``k``, the values drawn before it)
    sampled_as: Callable[[int, Drawn], str] | None = None
    #: its value where the sample does not hold it (``space, base, k, drawn``); default: the base config's
    fallback: Callable[[SearchSpace, RunConfig, int, Drawn], Any] | None = None
    #: whether a space has it at all (default: every space); a parameter a space lacks has no column
    present: Callable[[SearchSpace], bool] = lambda space: True
    #: how a drawn value changes a config where ``path`` cannot say it (None: set ``path``)
    apply: Callable[[RunConfig, Any], RunConfig] | None = None

    @property
    def per_layer(self) -> bool:
        return "{k}" in self.column

    def name(self, k: int = 0) -> str:
        return self.column.format(k=k)

    def sampled_name(self, k: int, drawn: Drawn) -> str:
        return self.sampled_as(k, drawn) if self.sampled_as else self.name(k)

    def read(self, cfg: RunConfig, k: int = 0) -> Any:
        """Its value in ``cfg`` (a parameter with ``apply`` has no path to read: None)."""
        if not self.path:
            return None
        value: Any = cfg
        for part in self.path:
            value = getattr(value, part)
        return self.kind(value[k] if self.per_layer else value)

    def default(self, space: SearchSpace, base: RunConfig, k: int, drawn: Drawn) -> Any:
        return self.fallback(space, base, k, drawn) if self.fallback else self.read(base, k)


def _categorical(choices: Callable[[SearchSpace], Sequence]) -> Callable:
    return lambda trial, name, space, k, drawn: trial.suggest_categorical(name, list(choices(space)))


def _epochs_range(space: SearchSpace, k: int):
    return space.curriculum.epochs[k]


EPOCHS = Param(
    "curriculum/epochs_{k}", ("student", "curriculum", "epochs"), int, lambda v: f"{v}ep",
    domain=lambda space, base, k: _interval(_epochs_range(space, k).low, _epochs_range(space, k).high,
                                            f"epochs of curriculum phase {k} (layer {k})"),
    suggest=lambda trial, name, space, k, drawn: trial.suggest_int(name, _epochs_range(space, k).low,
                                                                    _epochs_range(space, k).high),
)
LOSS = Param(
    "curriculum/loss_{k}", ("student", "curriculum", "losses"), str, str,
    domain=lambda space, base, k: _discrete(space.curriculum.losses, f"loss of curriculum layer {k}"),
    suggest=_categorical(lambda space: space.curriculum.losses),
)


def _suggest_weight(trial, name: str, space: SearchSpace, k: int, drawn: Drawn) -> float | None:
    r = weight_ranges(space)[drawn[LOSS.name(k)]]
    if r.low == r.high:
        return None  # a fixed weight is not a search dimension
    return trial.suggest_float(name, r.low, r.high, log=True)


def _weight_fallback(space: SearchSpace, base: RunConfig, k: int, drawn: Drawn) -> float:
    ranges = weight_ranges(space)
    loss = drawn.get(LOSS.name(k))
    return ranges[loss].low if loss in ranges else base.student.curriculum.weights[k]


def _weight_domain(space: SearchSpace, base: RunConfig, k: int) -> Domain:
    ranges = weight_ranges(space)  # a loss without a range of its own: 1
    return _interval(min(r.low for r in ranges.values()), max(r.high for r in ranges.values()),
                     f"weight of curriculum layer {k}'s loss; its range depends on the loss sampled for the layer")


WEIGHT = Param(
    "curriculum/weight_{k}", ("student", "curriculum", "weights"), float, lambda v: f"w={v:.3g}",
    domain=_weight_domain, suggest=_suggest_weight,
    sampled_as=lambda k, drawn: f"curriculum/weight_{k}_{drawn.get(LOSS.name(k))}",
    fallback=_weight_fallback,
)
OVERLAP = Param(
    "curriculum/overlap", ("student", "curriculum", "overlap"), bool, lambda v: f"overlap={v}",
    domain=lambda space, base, k: _discrete(space.curriculum.overlap, "earlier layers' losses stay active"),
    suggest=_categorical(lambda space: space.curriculum.overlap),
)
CRITERION = Param(
    "prune/criterion", ("prune", "criterion"), str, lambda v: f"criterion={v}",
    domain=lambda space, base, k: _discrete(space.criteria, "pruning criterion"),
    suggest=_categorical(lambda space: space.criteria),
)
TARGET = Param(
    "prune/target", ("prune", "target"), str, lambda v: f"target={v}",
    domain=lambda space, base, k: _discrete((base.prune.target,), "pruned targets: batch statistics or the auxiliary's own"),
)
BENCHMARK = Param(
    "benchmark", ("benchmark",), str, str,
    domain=lambda space, base, k: _discrete((base.benchmark,), "the benchmark"),
)

def _suggest_width(trial, name: str, space: SearchSpace, k: int, drawn: Drawn) -> float | None:
    width = space.student.width
    if width is None:
        return None
    if isinstance(width, tuple):
        return trial.suggest_categorical(name, list(width))
    return trial.suggest_float(name, width.low, width.high)


def _width_domain(space: SearchSpace, base: RunConfig, k: int) -> Domain:
    width = space.student.width
    low, high = (min(width), max(width)) if isinstance(width, tuple) else (width.low, width.high)
    return _interval(low, high, "the student's width: a multiplier of its conv stages' and embedding's channels")


WIDTH = Param(
    f"student/{WIDTH_NAME}", (), float, lambda v: f"width={v:g}",
    domain=_width_domain, suggest=_suggest_width, fallback=lambda space, base, k, drawn: None,
    present=lambda space: space.student.width is not None, apply=with_width,
)

#: every parameter of a curriculum layer, in column order
PER_LAYER: tuple[Param, ...] = (EPOCHS, LOSS, WEIGHT)
#: the parameters of the whole config, in column order
GLOBAL: tuple[Param, ...] = (OVERLAP, CRITERION, TARGET, BENCHMARK, WIDTH)
#: every parameter, in column order
PARAMS: tuple[Param, ...] = (*PER_LAYER, *GLOBAL)
#: the order the sampler draws them in: every layer's epochs, then each layer's loss and its weight,
#: then the global ones. A sampler's seed reproduces a search only in one order: keep it.
SAMPLING_PASSES: tuple[tuple[Param, ...], ...] = ((EPOCHS,), (LOSS, WEIGHT))


def _walk(space: SearchSpace, passes: tuple[tuple[Param, ...], ...]) -> Iterator[tuple[Param, int]]:
    """(parameter, layer) of ``space``: each pass over every layer, then the global parameters it has."""
    for group in passes:
        for k in range(_layers(space)):
            for p in group:
                yield p, k
    for p in GLOBAL:
        if p.present(space):
            yield p, 0


def sampling_order(space: SearchSpace) -> Iterator[tuple[Param, int]]:
    """(parameter, layer) of ``space`` in the order the sampler draws them."""
    return _walk(space, SAMPLING_PASSES)


def columns(space: SearchSpace) -> Iterator[tuple[Param, int]]:
    """(parameter, layer) of ``space`` in column order: each layer's parameters, then the global ones."""
    return _walk(space, (PER_LAYER,))


def _layers(space_or_cfg: SearchSpace | RunConfig) -> int:
    if isinstance(space_or_cfg, SearchSpace):
        return len(space_or_cfg.curriculum.epochs)
    return len(space_or_cfg.student.curriculum.epochs)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's nested parameters (``{"curriculum": {"loss_0": ...}}``) back into sampler names."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


class DefineByRun:
    """An Optuna define-by-run function sampling a space (picklable, so Tune can checkpoint the searcher)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial) -> None:
        drawn: Drawn = {}
        for p, k in sampling_order(self.space):
            if p.suggest is not None:
                drawn[p.name(k)] = p.suggest(trial, p.sampled_name(k, drawn), self.space, k, drawn)


def define_by_run(space: SearchSpace) -> DefineByRun:
    return DefineByRun(space)


def drawn_values(base: RunConfig, params: Mapping[str, Any], space: SearchSpace) -> Drawn:
    """Every sampled parameter's value by name (``curriculum/weight_0``): the sample's (nested as Tune
    gives it, or by sampler name), else its default; None for a parameter the space lacks."""
    flat = flatten(params)
    drawn: Drawn = {}
    for p, k in sampling_order(space):
        if p.suggest is None:
            continue
        value = flat.get(p.sampled_name(k, drawn))
        value = p.default(space, base, k, drawn) if value is None else value
        drawn[p.name(k)] = None if value is None else p.kind(value)
    return drawn


class Misfit(ValueError):
    """A value a search space cannot sample: ``name`` (its column, ``curriculum/loss_0``) and why."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name, self.why = name, why


class _Given:
    """Stands in for an Optuna trial: answers a suggestion with ``value`` if the suggestion could
    return it, else raises :class:`Misfit` (the define-by-run's own ranges and choices are the check)."""

    def __init__(self, column: str, value: Any) -> None:
        self.column, self.value = column, value

    def _outside(self, low: float, high: float) -> Misfit:
        return Misfit(self.column, f"{self.value!r} is outside this space's range {low:g}..{high:g}")

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not low <= self.value <= high:
            raise self._outside(low, high)
        return self.value

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not low <= self.value <= high:
            raise self._outside(low, high)
        return float(self.value)

    def suggest_categorical(self, name: str, choices: Sequence) -> Any:
        if not any(self.value == c and isinstance(self.value, bool) == isinstance(c, bool) for c in choices):
            raise Misfit(self.column, f"{self.value!r} is not among this space's choices "
                                      f"({', '.join(str(c) for c in choices)})")
        return self.value


def fit_values(space: SearchSpace, base: RunConfig, values: Drawn) -> dict[str, Any]:
    """The sample, by sampler name, with which ``space`` draws ``values`` (by column, as
    :func:`drawn_values` gives another search's trial): each value checked against the range or
    the choices the space samples it from. :class:`Misfit` names the first value that does not fit:
    one outside its range or choices, one the space fixes at another value, one it does not search
    (a width), a curriculum of another length."""
    layers, given = _layers(space), sum(1 for k in range(len(values)) if EPOCHS.name(k) in values)
    if given != layers:
        raise Misfit("curriculum", f"{given} layers in the source trial, {layers} in this space")
    sample: dict[str, Any] = {}
    drawn: Drawn = {}
    for p, k in sampling_order(space):
        if p.suggest is None:
            continue
        column, value = p.name(k), values.get(p.name(k))
        if value is None:
            raise Misfit(column, "the source trial has no value (its space does not search it)")
        name = p.sampled_name(k, drawn)
        sampled = p.suggest(_Given(column, value), name, space, k, drawn)
        if sampled is None:  # the space fixes it
            sampled = p.default(space, base, k, drawn)
            if sampled != value:
                raise Misfit(column, f"{value!r} in the source trial, fixed at {sampled!r} in this space")
        else:
            sample[name] = sampled
        drawn[column] = sampled
    for column, value in values.items():
        if value is not None and column not in drawn:
            raise Misfit(column, f"{value!r} in the source trial; this space does not search it")
    return sample


def apply_params(base: RunConfig, params: Mapping[str, Any], space: SearchSpace) -> RunConfig:
    """The trial's RunConfig: ``base`` with the sampled parameters (nested as Tune gives them, or by
    sampler name) applied; a parameter the sample does not hold keeps its default."""
    drawn = drawn_values(base, params, space)
    overrides: dict = {}
    for p in PARAMS:
        if p.suggest is None or p.apply is not None:
            continue
        *parents, leaf = p.path
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = [drawn[p.name(k)] for k in range(_layers(space))] if p.per_layer else drawn[p.name()]
    cfg = build_config(deep_merge(config_to_dict(base), overrides), benchmark=base.benchmark)
    for p in PARAMS:
        if p.apply is not None and drawn.get(p.name()) is not None:
            cfg = p.apply(cfg, drawn[p.name()])
    if cfg is not base:
        validate_config(cfg)
    return cfg


def trial_hparams(cfg: RunConfig, space: SearchSpace, drawn: Drawn | None = None) -> dict[str, Any]:
    """A trial's value of every parameter of ``space`` (its HParams row): ``drawn``'s
    (:func:`drawn_values`) where it holds one, else the config's."""
    drawn = drawn or {}
    return {p.name(k): drawn[p.name(k)] if drawn.get(p.name(k)) is not None else p.read(cfg, k)
            for p, k in columns(space)}


def trial_config(base: RunConfig, params: Mapping[str, Any], space: SearchSpace) -> tuple[RunConfig, dict[str, Any]]:
    """A trial's config (:func:`apply_params`) and its HParams row (:func:`trial_hparams`)."""
    cfg = apply_params(base, params, space)
    return cfg, trial_hparams(cfg, space, drawn_values(base, params, space))


def study_hparams(space: SearchSpace, base: RunConfig) -> list[Domain]:
    """Every parameter of one benchmark's search with its domain: the space's ranges and choices (one
    per curriculum layer of the space for a layer's parameter), else the base config's value."""
    return [dataclasses.replace(p.domain(space, base, k), name=p.name(k)) for p, k in columns(space)]


def merge_hparams(lists: Iterable[Sequence[Domain]]) -> list[Domain]:
    """The parameters of several benchmarks' searches, by name, each domain holding all of theirs."""
    merged: dict[str, Domain] = {}
    for domains in lists:
        for d in domains:
            merged[d.name] = merged[d.name].merged(d) if d.name in merged else d
    return list(merged.values())


def describe(params: Mapping[str, Any]) -> str:
    """A trial's sampled values as the table shows them: ``1ep pkt w=0.262; ...; overlap=True;
    criterion=activation`` (each layer's values, then the global ones; only what was sampled)."""
    flat = flatten(params)
    drawn: Drawn = {}
    layers, k = [], 0
    while True:
        parts = []
        for p in PER_LAYER:
            name = p.sampled_name(k, drawn)
            if name in flat:
                drawn[p.name(k)] = p.kind(flat[name])
                parts.append(p.text(drawn[p.name(k)]))
        if not parts:
            break
        layers.append(" ".join(parts))
        k += 1
    rest = [p.text(p.kind(flat[p.name()])) for p in GLOBAL if p.name() in flat]
    return "; ".join(layers + rest)
