"""Names the study's modules share, each defined once: what trials report, the table's rows, files."""
from __future__ import annotations

from indistill.method.methods import METHODS, method_label
from indistill.engine.stages import ARTIFACT_STAGES

#: what every trial reports to Tune and the search maximises: its epoch's
#: :data:`indistill.evaluation.embedding.SELECTION_KEY` (val cosine mAP)
OBJECTIVE = "val_map"
#: the student-size objectives a search space may add to :data:`OBJECTIVE` (``objectives: [val_map,
#: params]``), each with the metric every trial reports for it (minimised): the student's parameter
#: count, its multiply-accumulates per image
SIZE_OBJECTIVES: dict[str, str] = {"params": "student_params", "macs": "student_macs"}
#: what each size objective counts, in words
SIZE_TEXT: dict[str, str] = {"params": "parameters", "macs": "multiply-accumulates per image"}
#: the student's width multiplier (a frontier study's size dimension): a trial's parameter, a table column
WIDTH = "width"
#: a benchmark's search record: every trial's status, parameters and values, and the best trial
TRIALS_FILE = "search/trials.json"
#: a multi-objective search's Pareto set, in the benchmark's directory
PARETO_FILE = "search/pareto.csv"
#: the points the final runs retrain: each one's width and search trial
POINTS_FILE = "search/points.json"
#: a warm-started trial's origin (source study, benchmark, trial id): its Optuna user attribute, its
#: key in Tune's config and in ``search/trials.json``, its HParams column (:mod:`study.warm_start`)
WARM_START = "warm_start"
#: ASHA's time attribute: epochs completed in the embedding phase (after the trial's curriculum)
EMBEDDING_EPOCH = "embedding_epoch"

#: the row of the searched InDistill, and of InDistill with the paper's defaults
TUNED = "InDistill (tuned)"
PAPER_DEFAULTS = "InDistill (paper defaults)"
#: the method the study searches (its trials' students); the artifact runs always serve it
SEARCHED = "indistill"
#: the student methods the study trains as baselines: every registered method but the searched one
BASELINES: tuple[str, ...] = tuple(m for m in METHODS.names() if m != SEARCHED)
#: (row label, method, tuned?) of every student row of a study's table: the baselines with the
#: paper defaults, then InDistill with them, then the tuned InDistill
STUDENT_ROWS: tuple[tuple[str, str, bool], ...] = (
    *((method_label(m), m, False) for m in BASELINES),
    (PAPER_DEFAULTS, SEARCHED, False),
    (TUNED, SEARCHED, True),
)
#: the artifact stages whose networks are rows of the table (teacher, auxiliary)
NETWORK_ROWS: tuple[str, ...] = tuple(name for name, stage in ARTIFACT_STAGES.items() if stage.row)
#: the table's rows of a benchmark, in order: the artifact networks, then the students
ROW_ORDER: tuple[str, ...] = (*NETWORK_ROWS, *(label for label, _method, _tuned in STUDENT_ROWS))

#: where each input of a benchmark's study is kept in its directory (resolved, as YAML)
INPUT_FILES: dict[str, str] = {"base config": "base_config.yaml", "search space": "search_space.yaml"}

#: the teacher's and the auxiliary's test rows, written by the artifact run
NETWORKS_FILE = "artifacts/networks.json"
#: where an artifact run writes which of its stages are done (read by the driver's ticker)
ARTIFACT_PROGRESS = "artifacts/progress.json"
