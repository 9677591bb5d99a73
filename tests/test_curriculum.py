"""The curriculum plan of the reference recipe: which loss on which tap in which epoch."""
from indistill.config.run import CurriculumConfig
from indistill.engine.configure import build_config
from indistill.method.curriculum import Term, curriculum_plan

TAPS = ("block0", "block1", "block2")


def test_reference_recipe_plan():
    cfg = build_config(benchmark="cifar10")
    plan = curriculum_plan(cfg.student.curriculum, TAPS, cfg.student.epochs)
    assert len(plan) == 70
    # epochs 0-2: MSE on tap 0; 3-6: tap 1; 7-11: tap 2; 12-69: PKT on the embedding only
    for epoch, phase in enumerate(plan):
        if epoch < 3:
            assert phase.terms == (Term("block0", "mse", 1.0),) and not phase.embedding and phase.index == 0
        elif epoch < 7:
            assert phase.terms == (Term("block1", "mse", 1.0),) and not phase.embedding and phase.index == 1
        elif epoch < 12:
            assert phase.terms == (Term("block2", "mse", 1.0),) and not phase.embedding and phase.index == 2
        else:
            assert phase.terms == () and phase.embedding and phase.index == 3
    assert cfg.student.curriculum.embedding_loss == "pkt"


def test_overlap_keeps_earlier_layers_with_their_weights():
    cur = CurriculumConfig(epochs=(1, 2, 1), losses=("mse", "pkt", "cosine"), weights=(0.5, 2.0, 3.0), overlap=True)
    plan = curriculum_plan(cur, TAPS, 6)
    a, b, c = Term("block0", "mse", 0.5), Term("block1", "pkt", 2.0), Term("block2", "cosine", 3.0)
    assert [p.terms for p in plan] == [(a,), (a, b), (a, b), (a, b, c), (a, b, c), (a, b, c)]
    assert [p.embedding for p in plan] == [False, False, False, False, True, True]


def test_zero_length_phase_is_skipped_and_plan_is_truncated():
    cur = CurriculumConfig(epochs=(0, 2, 3))
    plan = curriculum_plan(cur, TAPS, 4)
    assert [p.index for p in plan] == [1, 1, 2, 2]
