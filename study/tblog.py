"""Rank-0 TensorBoard logging of a training run, mirrored into the study storage."""
from __future__ import annotations

import tempfile
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from .storage import Storage


class TensorBoardLogger:
    """Writes per-epoch scalars locally and copies the event files to ``storage/rel`` after each epoch."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel
        self.local = Path(tempfile.mkdtemp(prefix="indistill-tb-"))
        self.writer = SummaryWriter(log_dir=str(self.local))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.flush()

    def pr_curve(self, tag: str, labels, scores, step: int = 0) -> None:
        self.writer.add_pr_curve(tag, labels, scores, global_step=step)

    def flush(self) -> None:
        self.writer.flush()
        self.storage.upload(self.local, self.rel)

    def close(self) -> None:
        self.writer.close()
        self.storage.upload(self.local, self.rel)
