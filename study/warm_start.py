"""Warm starts: a new search's first trials are the best configs of a benchmark of finished studies
(``indistill-study run --warm-start SOURCE``), each marked with where it came from.

For each benchmark of the new study and each source, the source's search record of the same
benchmark (or of ``--warm-start-benchmark``) is ranked by the study's own rule
(:func:`study.outcome.best_key`: the most epochs, then val mAP) and its best ``budget.warm_start``
trials are taken; a multi-objective source gives its whole Pareto set instead
(:func:`study.outcome.pareto_front`). Each is fitted to the new space
(:func:`study.params.fit_values`): one that does not fit is skipped with a notice naming the
parameter; when none fits, the study stops before Ray starts. The ones that fit are enqueued in the
search's Optuna record (:func:`enqueue`), so the sampler's first proposals are them, counted in
``budget.trials``.

A warm-started trial's origin (source study, benchmark, trial id) is named :data:`WARM_START`
everywhere: the Optuna record's user attribute, the key Tune's config and ``search/trials.json``
hold it under, the HParams column. The resolved warm start is kept in the study directory
(:data:`WARM_START_FILE`) and is what ``--resume`` uses. Imports no Ray, and no Optuna.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import yaml

from indistill.common.errors import ConfigError, UserError
from indistill.config.run import RunConfig
from indistill.config.schema import from_dict
from indistill.engine.configure import build_config

from .names import INPUT_FILES, OBJECTIVE, SIZE_OBJECTIVES, TRIALS_FILE, WARM_START
from .outcome import best_key, pareto_front
from .params import Domain, Misfit, drawn_values, fit_values
from .search_space import SearchSpace
from .storage import Storage

#: the resolved warm start of a benchmark, in its directory (what ``--resume`` enqueues)
WARM_START_FILE = "search/warm_start.json"
#: the HParams value of a trial the sampler proposed itself
COLD = "none"


@dataclass(frozen=True)
class Origin:
    """Where a warm-started trial comes from: a study directory, its benchmark, its trial."""

    study: str
    benchmark: str
    trial_id: str

    @property
    def text(self) -> str:
        return f"{self.study} {self.benchmark} trial {self.trial_id}"

    def as_dict(self) -> dict[str, str]:
        return {"study": self.study, "benchmark": self.benchmark, "trial_id": self.trial_id}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "Origin":
        return cls(str(data["study"]), str(data["benchmark"]), str(data["trial_id"]))


@dataclass(frozen=True)
class WarmPoint:
    """One source trial fitted to the new space: its sample by sampler name, its origin and its val mAP."""

    origin: Origin
    params: dict
    val_map: float | None = None


@dataclass(frozen=True)
class WarmStart:
    """A benchmark's warm start: the sources (resolved), the source benchmark, the points the search
    evaluates first (in order) and one notice line per source config it skipped."""

    sources: tuple[str, ...]
    benchmark: str
    points: tuple[WarmPoint, ...]
    skipped: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"sources": list(self.sources), "benchmark": self.benchmark, "skipped": list(self.skipped),
                "points": [{WARM_START: p.origin.as_dict(), "params": p.params, OBJECTIVE: p.val_map}
                           for p in self.points]}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "WarmStart":
        points = tuple(WarmPoint(Origin.of(p[WARM_START]), dict(p["params"]), p.get(OBJECTIVE)) for p in data["points"])
        return cls(tuple(data["sources"]), str(data["benchmark"]), points, tuple(data.get("skipped", ())))


@dataclass(frozen=True)
class Source:
    """A source study's search record of one benchmark, with the space and base config it sampled."""

    storage: Storage
    benchmark: str
    trials: list[dict]
    space: SearchSpace
    base: RunConfig


def open_source(location: str, benchmark: str) -> Source:
    """A source study's record of ``benchmark``: one line naming what is missing otherwise (a
    study directory, the benchmark in it, its finished search)."""
    storage = Storage.create(location)
    try:
        state = storage.check_study()
    except UserError as exc:
        raise ConfigError(f"--warm-start: {exc}") from None
    if benchmark not in state["benchmarks"]:
        raise ConfigError(f"--warm-start: {storage.uri} has no {benchmark} (its benchmarks: "
                          f"{', '.join(state['benchmarks'])}); --warm-start-benchmark names another one")
    rel = f"{benchmark}/{TRIALS_FILE}"
    if not storage.exists(rel):
        raise ConfigError(f"--warm-start: {storage.uri}: its {benchmark} search has not finished (no {rel})")
    space = from_dict(SearchSpace, yaml.safe_load(storage.read_text(f"{benchmark}/{INPUT_FILES['search space']}")))
    base = build_config(yaml.safe_load(storage.read_text(f"{benchmark}/{INPUT_FILES['base config']}")), benchmark=benchmark)
    return Source(storage, benchmark, list(storage.read_json(rel).get("trials", [])), space, base)


def ranked(trials: Iterable[dict], space: SearchSpace, count: int) -> list[dict]:
    """A source search's best configs: its ``count`` best trials by :func:`study.outcome.best_key`
    (the most epochs, then the highest val mAP; failed and unscored trials never), or for a
    multi-objective search its whole Pareto set (:func:`study.outcome.pareto_front`, by size)."""
    trials = list(trials)
    if space.size_objective is not None:
        return pareto_front(trials, OBJECTIVE, SIZE_OBJECTIVES[space.size_objective])
    keyed = [(key, t) for t in trials if (key := best_key(t["status"], t.get("epochs", 0), t.get(OBJECTIVE))) is not None]
    return [t for _key, t in sorted(keyed, key=lambda kt: kt[0], reverse=True)[:count]]


def fit(source: Source, trial: dict, space: SearchSpace, base: RunConfig) -> WarmPoint:
    """``trial`` of ``source`` as a sample of ``space`` (:func:`study.params.fit_values`), or
    :class:`~study.params.Misfit`."""
    values = drawn_values(source.base, trial["params"], source.space)
    sample = fit_values(space, base, values)
    return WarmPoint(Origin(source.storage.uri, source.benchmark, str(trial["trial_id"])), sample, trial.get(OBJECTIVE))


def _trial_text(origin: Origin, val_map: object) -> str:
    score = f" (val mAP {100 * float(val_map):.2f})" if isinstance(val_map, (int, float)) else ""
    return f"{origin.text}{score}"


def resolve(sources: Sequence[str], benchmark: str, from_benchmark: str | None, space: SearchSpace,
            base: RunConfig) -> WarmStart:
    """The warm start of ``benchmark`` from ``sources`` (in order), from their ``from_benchmark``
    (default: the same benchmark): each source's :func:`ranked` configs that fit ``space``, at most
    ``budget.trials`` in all. None that fits: :class:`ConfigError`, one line with each reason."""
    source_benchmark = from_benchmark or benchmark
    uris = tuple(Storage.create(s).uri for s in sources)
    points: list[WarmPoint] = []
    skipped: list[str] = []
    for location in uris:
        source = open_source(location, source_benchmark)
        best = ranked(source.trials, source.space, space.budget.warm_start)
        if not best:
            skipped.append(f"{source.storage.uri} {source_benchmark}: no trial of its search has a val mAP")
        for trial in best:
            origin = Origin(source.storage.uri, source_benchmark, str(trial["trial_id"]))
            try:
                points.append(fit(source, trial, space, base))
            except Misfit as exc:
                skipped.append(f"{_trial_text(origin, trial.get(OBJECTIVE))}: {exc}")
    if not points:
        raise ConfigError(f"--warm-start: no config of {', '.join(uris)} "
                          f"({source_benchmark}) fits the {benchmark} search space: {'; '.join(skipped)}")
    if len(points) > space.budget.trials:
        skipped += [f"{_trial_text(p.origin, p.val_map)}: beyond budget.trials ({space.budget.trials})"
                    for p in points[space.budget.trials:]]
        points = points[:space.budget.trials]
    return WarmStart(uris, source_benchmark, tuple(points), tuple(skipped))


def notices(benchmark: str, warm: WarmStart) -> list[str]:
    """The lines a new study prints about its warm start: one per skipped source config."""
    return [f"{benchmark}: --warm-start skips {line}" for line in warm.skipped]


def summary(warm: WarmStart) -> str:
    """The warm start in one phrase (the dry run's plan, the search's first line)."""
    firsts = ", ".join(_trial_text(p.origin, p.val_map) for p in warm.points)
    skipped = f"; {len(warm.skipped)} skipped" if warm.skipped else ""
    first = "the first trial is" if len(warm.points) == 1 else f"the first {len(warm.points)} trials are"
    return f"{first} {firsts}{skipped}"


# ----------------------------------------------------------------------------- the study directory


def write(storage: Storage, benchmark: str, warm: WarmStart) -> None:
    storage.write_json(f"{benchmark}/{WARM_START_FILE}", warm.as_dict())


def recorded(storage: Storage, benchmark: str) -> WarmStart | None:
    """The warm start a study was started with (None: it was started cold)."""
    rel = f"{benchmark}/{WARM_START_FILE}"
    return WarmStart.of(storage.read_json(rel)) if storage.exists(rel) else None


def for_resume(storage: Storage, benchmark: str, sources: Sequence[str], from_benchmark: str | None) -> WarmStart | None:
    """A resumed study's warm start: the recorded one. ``--warm-start`` given again must name the
    same sources and source benchmark (a resumed study keeps its inputs)."""
    warm = recorded(storage, benchmark)
    if not sources:
        return warm
    given = tuple(Storage.create(s).uri for s in sources)
    then = "no warm start" if warm is None else f"--warm-start {' '.join(warm.sources)} ({warm.benchmark})"
    if warm is None or given != warm.sources or (from_benchmark or benchmark) != warm.benchmark:
        raise ConfigError(f"--resume: {benchmark} was started with {then}, not --warm-start {' '.join(given)} "
                          f"({from_benchmark or benchmark}); start a new study with another --name to use them")
    return warm


# ----------------------------------------------------------------------------- the Optuna record


def _key(origin: Mapping[str, Any]) -> str:
    return json.dumps(dict(origin), sort_keys=True)


def enqueue(study: Any, points: Sequence[WarmPoint]) -> int:
    """Each point as a waiting trial of the Optuna ``study`` (``enqueue_trial``: the next ``ask``
    returns its values) with its origin as the user attribute :data:`WARM_START`, unless the record
    holds a trial of that origin already, in any state (waiting, running, finished): a resumed
    search, whose searcher Tune restores or builds again on the same record, never enqueues a point
    twice. Returns how many it enqueued."""
    if not points:
        return 0
    held = {_key(t.user_attrs[WARM_START]) for t in study.get_trials(deepcopy=False) if WARM_START in t.user_attrs}
    added = 0
    for p in points:
        if _key(p.origin.as_dict()) not in held:
            study.enqueue_trial(p.params, user_attrs={WARM_START: p.origin.as_dict()})
            added += 1
    return added


# ----------------------------------------------------------------------------- where a trial shows its origin


def origin_of(params: Mapping[str, Any]) -> Origin | None:
    """The origin a warm-started trial's config (or its ``trials.json`` row) holds; None otherwise."""
    data = params.get(WARM_START)
    return Origin.of(data) if isinstance(data, Mapping) else None


def hparams_domains(plans: Iterable) -> list[Domain]:
    """The HParams column of the origins, when a benchmark of the study (``plans``) is warm-started."""
    texts = [p.origin.text for bp in plans if getattr(bp, "warm_start", None) for p in bp.warm_start.points]
    if not texts:
        return []
    return [Domain(WARM_START, values=(COLD, *dict.fromkeys(texts)),
                   description="the source study, benchmark and trial a warm-started trial re-evaluates")]


def hparams_value(bp: Any, params: Mapping[str, Any]) -> dict[str, str]:
    """A trial's HParams value of :data:`WARM_START` (nothing when its benchmark is not warm-started)."""
    if not bp.warm_start:
        return {}
    origin = origin_of(params)
    return {WARM_START: origin.text if origin else COLD}


def table_note(trials: Mapping[str, Any]) -> str:
    """The tuned row's note on its search's warm start ("" for a cold search): how many trials were
    warm-started, from where, and whether the best is one of them."""
    origins = [o for t in trials.get("trials", []) if (o := origin_of(t)) is not None]
    if not origins:
        return ""
    studies = ", ".join(dict.fromkeys(f"{o.study} ({o.benchmark})" for o in origins))
    best = origin_of(trials["best"]) if trials.get("best") else None
    which = f"the best re-ran {best.text}" if best else "the best is one the sampler proposed"
    return f"{len(origins)} warm-started trial{'s' if len(origins) != 1 else ''} from {studies}; {which}"


def strip(params: dict) -> tuple[dict, dict | None]:
    """A trial's config without its origin, and the origin (as a dict; None for a cold trial)."""
    rest = {k: v for k, v in params.items() if k != WARM_START}
    data = params.get(WARM_START)
    return rest, dict(data) if isinstance(data, Mapping) else None

