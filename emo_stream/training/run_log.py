"""Run logs: one CSV file of scalars per run (and TensorBoard event files when tensorboard is importable)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RunLog:
    """Append rows of scalars to ``folder/name.csv``; the columns are fixed by the first row written.

    A resumed run appends to the same file (rows past the resume step are left from the interrupted run;
    readers keep the last row of a step).
    """

    def __init__(self, folder: Path, name: str = "log", tensorboard: bool = True) -> None:
        self.path = Path(folder) / f"{name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(newline="") as f:
                self._columns = next(csv.reader(f), None)
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; the CSV is the record
                pass
            else:
                self._writer = SummaryWriter(str(Path(folder) / "tensorboard"))

    def write(self, step: int, **scalars: float) -> None:
        row = {"step": step, **scalars}
        if self._columns is None:
            self._columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self._columns])
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a CSV log as floats (for tests and plots)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
