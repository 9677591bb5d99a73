"""A study's TensorBoard logs: rank-0 curves mirrored into the study storage, the HParams of the
search, the run names, and which loggers Tune itself runs.

Where the runs are (relative to the study directory, the log directory TensorBoard opens):

- ``<benchmark>/tensorboard/trials/trial-<k>-<id>``: one run per search trial (curves and its HParams
  row); ``k`` is the trial's index in creation order, ``id`` Tune's trial id;
- ``<benchmark>/tensorboard/artifacts/<stage>/<protocol>``: the teacher's and the auxiliary's
  training curves (``auxiliary-ce``: its cross-entropy start; ``auxiliary``: its PKT phase);
  protocol ``val``: trained without the val images (what the search reads), ``test``: on the full
  train split (what the final runs read);
- ``<benchmark>/tensorboard/final/<row>/seed-<s>``: the final runs;
- ``<benchmark>/tensorboard/`` itself: the HParams experiment (:func:`write_hparams_experiment`).

Tune's own TensorBoard logger is off (:func:`tune_loggers`, with the variable that
:func:`study.ray_runs.init_ray` sets): it wrote every trial a second time, under a run name cut at
150 characters.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch.utils.tensorboard import SummaryWriter

from indistill.evaluation.retrieval import PRCurve
from indistill.engine.loop import COUNTERS

from .params import Domain, merge_hparams, study_hparams
from .storage import Storage
from .warm_start import hparams_domains as warm_start_domains

# ----------------------------------------------------------------------------- run names


def trial_run_name(index: int, trial_id: str, trials: int = 0) -> str:
    """``trial-<k>-<id>``: ``index`` zero-padded to three digits, or to the width of ``trials`` (the
    search budget) when wider, so the names of one search sort in creation order."""
    width = max(3, len(str(max(trials - 1, 0))))
    return f"trial-{index:0{width}d}-{trial_id}"


@dataclasses.dataclass(frozen=True)
class TrialNamer:
    """Tune's ``trial_name_creator`` for a search of ``trials`` trials: ``trial-<k>-<id>``.

    ``k`` (0-based) comes from the trial's experiment tag, ``<n>_<params>``: Tune's search generator
    numbers the trials it creates (n = 1, 2, ...) and keeps that count in the search's state, so a
    resumed search (``--resume``) goes on numbering where it stopped. A tag without that number
    gives ``trial-<id>``.
    """

    trials: int = 0

    def __call__(self, trial: Any) -> str:
        head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
        if not head.isdigit() or int(head) < 1:
            return f"trial-{trial.trial_id}"
        return trial_run_name(int(head) - 1, trial.trial_id, self.trials)


def tensorboard_dir(benchmark: str) -> str:
    return f"{benchmark}/tensorboard"


def trial_run(benchmark: str, trial_name: str) -> str:
    """A search trial's run (``trial_name``: Tune's trial name, see :class:`TrialNamer`)."""
    return f"{tensorboard_dir(benchmark)}/trials/{trial_name}"


def artifact_run(benchmark: str, stage: str, protocol: str) -> str:
    return f"{tensorboard_dir(benchmark)}/artifacts/{stage}/{protocol}"


def final_run(benchmark: str, row_slug: str, seed: int) -> str:
    return f"{tensorboard_dir(benchmark)}/final/{row_slug}/seed-{seed}"


# ----------------------------------------------------------------------------- Tune's loggers

#: Ray Tune adds its CSV, JSON and TensorBoard (TBX) logger callbacks unless they are passed, or
#: unless this variable is "1" (ray/tune/utils/callback.py, _create_default_callbacks); the study
#: sets it unless it is set
AUTO_LOGGERS_ENV = ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def tune_loggers() -> list:
    """The logger callbacks of the study's Tune runs: Tune's JSON and CSV loggers (``result.json``,
    ``progress.csv``: Tune's result grid and the tests read them), not its TensorBoard logger.

    Passing the JSON and CSV loggers does not keep Tune from adding its TBX logger; the variable
    :data:`AUTO_LOGGERS_ENV` does. Tune reads it in the driver's process when a Tuner fits:
    :func:`study.ray_runs.init_ray` sets it there once, unless the user set it (0 brings Tune's own
    TensorBoard files back). A search resumed with ``--resume`` gets the callbacks it was started
    with (Tune keeps them with its state); pass these again.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


# ----------------------------------------------------------------------------- HParams


def experiment_summary(domains: Sequence[Domain], metrics: Sequence[tuple[str, str]]):
    """The HParams experiment: its columns (``domains``: the searched parameters, see
    :func:`study.params.study_hparams`; ``metrics``: (scalar tag, description), in column order),
    built by TensorBoard's ``hparams_config_pb``.

    TensorBoard's HParams dashboard takes its columns from the first run holding an experiment
    (backend_context.Context.experiment_from_metadata); without one it lists every scalar of the
    trial runs as a metric, sorted by name. It shows the first five metrics and, of the hparams
    sorted by (not differs, name), the first five. ``hparams_config_pb`` leaves ``differs`` unset;
    it is set here from the domains, so the searched parameters come before the fixed ones.
    """
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp  # not hparams.api: that one imports TensorFlow

    columns = []
    for d in domains:
        if d.interval is not None:
            domain = hp.RealInterval(*d.interval)
        elif {type(v) for v in d.values} == {bool}:
            domain = hp.Discrete(list(d.values))
        else:
            domain = hp.Discrete([str(v) for v in d.values])
        columns.append(hp.HParam(d.name, domain, description=d.description))
    summary = hp.hparams_config_pb(columns, [hp.Metric(tag, description=text) for tag, text in metrics],
                                    time_created_secs=time.time())
    value = summary.value[0]
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    for info, d in zip(experiment.hparam_infos, domains):
        info.differs = d.differs
    value.metadata.CopyFrom(metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return summary


#: the experiment's event file in ``<benchmark>/tensorboard/``: a fixed name, so writing it again
#: (on --resume) replaces it; TensorBoard reads every file whose name holds "tfevents"
EXPERIMENT_FILE = "events.out.tfevents.0.hparams-experiment"


def write_hparams_experiment(storage: Storage, benchmarks: Sequence, metrics: Sequence[tuple[str, str]]) -> list[str]:
    """The study's HParams experiment, written by the driver before the searches start, into every
    benchmark's ``tensorboard/`` directory; returns the paths written (relative to the study).

    ``benchmarks``: the study's plans (``.benchmark``, ``.space``, ``.base``). TensorBoard reads one
    experiment per log directory (the first it meets), so each copy holds the hyperparameters of
    all the study's benchmarks (domains merged): opened on the study directory, every trial of
    every benchmark has its columns; opened on one benchmark's ``tensorboard/``, the same.
    """
    domains = [*merge_hparams(study_hparams(b.space, b.base) for b in benchmarks), *warm_start_domains(benchmarks)]
    summary = experiment_summary(domains, metrics)
    with tempfile.TemporaryDirectory(prefix="indistill-hparams-") as tmp:
        writer = SummaryWriter(log_dir=tmp)
        writer._get_file_writer().add_summary(summary, global_step=0)
        writer.close()
        (event_file,) = Path(tmp).glob("*tfevents*")
        written = []
        for b in benchmarks:
            rel = f"{tensorboard_dir(b.benchmark)}/{EXPERIMENT_FILE}"
            storage.upload_file(event_file, rel)
            written.append(rel)
    return written


# ----------------------------------------------------------------------------- the logger


class TensorBoardLogger:
    """Writes one run's scalars in a local directory and copies the event files to ``storage/rel``
    (after each epoch and when closed; closing removes the local directory)."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel
        self.local = Path(tempfile.mkdtemp(prefix="indistill-tb-"))
        self._remove_local = weakref.finalize(self, shutil.rmtree, self.local, ignore_errors=True)  # also if never closed
        self.writer = SummaryWriter(log_dir=str(self.local))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self._add(step, scalars)
        self.flush()

    def _add(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def log_history(self, history: Sequence[Mapping[str, float]]) -> None:
        """A finished stage's per-epoch metrics (indistill's Loop history, not its counters), at steps 1, 2, ..."""
        for i, metrics in enumerate(history):
            self._add(int(metrics.get("epoch", i)) + 1, {k: v for k, v in metrics.items() if k not in COUNTERS})
        self.flush()

    def hparams(self, values: Mapping[str, Any], group: str, start_time: float | None = None) -> None:
        """This run's HParams row (a session start): ``values`` by hyperparameter name; ``group``: the
        name the dashboard shows for it. Written into this run itself (``SummaryWriter.add_hparams``
        would write a timestamped sub-run instead)."""
        from tensorboard.plugins.hparams import summary_v2

        self.writer._get_file_writer().add_summary(summary_v2.hparams_pb(dict(values), trial_id=group,
                                                                         start_time_secs=start_time), global_step=0)
        self.flush()

    def pr_curve(self, tag: str, curve: PRCurve, step: int = 0) -> None:
        """An averaged 11-point curve (:func:`indistill.evaluation.retrieval.pr_curve`) as a TensorBoard PR curve: the
        dashboard's "threshold" j/10 is the recall level."""
        self.writer.add_pr_curve_raw(tag, curve.tp.numpy(), curve.fp.numpy(), curve.tn.numpy(), curve.fn.numpy(),
                                     curve.precision.numpy(), curve.recall.numpy(), global_step=step,
                                     num_thresholds=len(curve.precision))

    def flush(self) -> None:
        self.writer.flush()
        self.storage.upload(self.local, self.rel)

    def close(self) -> None:
        """The last upload; the local copy is removed (also when the upload fails)."""
        try:
            self.writer.close()
            self.storage.upload(self.local, self.rel)
        finally:
            self._remove_local()
