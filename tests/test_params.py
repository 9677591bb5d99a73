"""The searched parameters (study/params.py): each declared once, everything else derived from them."""
import optuna
import pytest

from study.params import (
    GLOBAL,
    PARAMS,
    PER_LAYER,
    WIDTH,
    apply_params,
    define_by_run,
    describe,
    flatten,
    sampling_order,
    study_hparams,
    trial_hparams,
)
from study.search_space import base_config, default_space_path, load_space

SAMPLED = [p for p in PARAMS if p.suggest is not None]


@pytest.fixture(scope="module")
def digits():
    space = load_space(default_space_path("digits"), "digits")
    return space, base_config(space, "digits")


def _sample(space, trials: int = 4) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=2))
    out = []
    for i in range(trials):
        trial = study.ask()
        define_by_run(space)(trial)
        study.tell(trial, float(i % 3))
        out.append(trial.params)
    return out


def test_the_sampler_draws_the_digits_space_in_its_fixed_order(digits):
    """Golden: a seeded TPE (two random start-up trials, then TPE) draws these values; they change
    if the order of the suggest calls or a parameter's range or name changes."""
    space, _ = digits
    first, *_, fourth = _sample(space)
    assert list(first) == ["curriculum/epochs_0", "curriculum/epochs_1", "curriculum/epochs_2",
                           "curriculum/loss_0", "curriculum/weight_0_cosine", "curriculum/loss_1",
                           "curriculum/weight_1_cosine", "curriculum/loss_2", "curriculum/weight_2_pkt",
                           "curriculum/overlap", "prune/criterion"]
    assert first["curriculum/weight_0_cosine"] == pytest.approx(0.17830791467464946, rel=1e-12)
    weights = {k: v for k, v in fourth.items() if "/weight_" in k}
    assert {k: v for k, v in fourth.items() if k not in weights} == {
        "curriculum/epochs_0": 3, "curriculum/epochs_1": 1, "curriculum/epochs_2": 4, "curriculum/loss_0": "cosine",
        "curriculum/loss_1": "pkt", "curriculum/loss_2": "pkt", "curriculum/overlap": True, "prune/criterion": "taylor"}
    assert weights == pytest.approx({"curriculum/weight_0_cosine": 0.3345031696473183,
                                     "curriculum/weight_1_pkt": 0.21350067680250923,
                                     "curriculum/weight_2_pkt": 0.392169611422935}, rel=1e-12)


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        head, _, tail = key.partition("/")
        out.setdefault(head, {})[tail] = value
    return out


def test_apply_params_puts_every_sampled_value_where_the_config_reads_it(digits):
    space, base = digits
    sample = _sample(space)[3]
    cfg = apply_params(base, _nested(sample), space)
    assert cfg.student.curriculum.epochs == (3, 1, 4)
    assert cfg.student.curriculum.losses == ("cosine", "pkt", "pkt")
    assert cfg.student.curriculum.weights == pytest.approx((0.3345031696473183, 0.21350067680250923, 0.392169611422935))
    assert cfg.student.curriculum.overlap is True and cfg.prune.criterion == "taylor"
    assert apply_params(base, sample, space) == cfg  # by sampler name too


@pytest.mark.parametrize("param", SAMPLED, ids=lambda p: p.column)
def test_each_sampled_parameter_round_trips_through_the_config(digits, param):
    """The value a trial's config holds (what its HParams row shows) is the value sampled."""
    space, base = digits
    sample = _sample(space)[1]
    cfg = apply_params(base, sample, space)
    drawn = {}
    for p, k in sampling_order(space):
        if p.suggest is None:
            continue
        name = p.sampled_name(k, drawn)
        drawn[p.name(k)] = sample[name]
        if p is param:
            assert p.read(cfg, k) == pytest.approx(sample[name])
            assert trial_hparams(cfg, space)[p.name(k)] == pytest.approx(sample[name])


def test_a_parameter_the_sample_lacks_keeps_the_base_value(digits):
    space, base = digits
    cfg = apply_params(base, {"prune": {"criterion": "l2"}}, space)
    assert cfg.prune.criterion == "l2"
    assert cfg.student.curriculum.epochs == base.student.curriculum.epochs
    # a loss the space weighs with a range gets its range's low end where no weight was sampled
    assert cfg.student.curriculum.weights == tuple(
        space.curriculum.weights[loss]["low"] if loss in space.curriculum.weights else w
        for loss, w in zip(base.student.curriculum.losses, base.student.curriculum.weights))


def test_the_hparams_columns_and_a_trials_row_have_the_same_names(digits):
    space, base = digits
    layers = len(space.curriculum.epochs)
    names = [d.name for d in study_hparams(space, base)]
    # the digits space samples no width: no width column
    assert names == [p.name(k) for k in range(layers) for p in PER_LAYER] + [p.name() for p in GLOBAL if p is not WIDTH]
    assert list(trial_hparams(base, space)) == names
    assert {d.name for d in study_hparams(space, base) if d.differs} == (
        {p.name(k) for k in range(layers) for p in PER_LAYER} | {"curriculum/overlap", "prune/criterion"})


def test_describe_shows_the_sampled_values_layer_by_layer():
    params = {"curriculum": {"epochs_0": 1, "loss_0": "pkt", "weight_0_pkt": 0.26213, "epochs_1": 2,
                             "loss_1": "mse", "overlap": True}, "prune": {"criterion": "activation"}}
    # layer 1's weight was not sampled (a fixed weight): not shown
    assert describe(params) == "1ep pkt w=0.262; 2ep mse; overlap=True; criterion=activation"
    assert describe(flatten(params)) == describe(params)
