"""Training metrics: every step in memory, interval means into metrics.csv and TensorBoard,
validation rows into val_metrics.csv (rank 0 only)."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from .criterion import LOSS_NAMES
from .state import StepResult, TrainState
from .recipe import TrainConfig

log = logging.getLogger("mobius.train")

TRAIN_COLUMNS = ("step", "lr", "loss", *LOSS_NAMES, "grad_norm", "skipped_steps", "seconds_per_step")
AP_COLUMNS = ("box_AP", "mask_AP", "mask_AP50")
EVAL_COLUMNS = ("step", "loss", *LOSS_NAMES, "nonfinite_batches", *AP_COLUMNS)


class MetricsLogger:
    """Every step into `history`; interval means into metrics.csv and TensorBoard (rank 0)."""

    def __init__(self, output_dir: Path, config: TrainConfig, enabled: bool, start_step: int):
        self.history: list[StepResult] = []
        self.step_seconds: list[float] = []
        self.interval = config.log_interval
        self.enabled = enabled
        self.pending: list[tuple[StepResult, float]] = []
        self.state = TrainState()
        self.writer = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.train_csv = _open_csv(output_dir / "metrics.csv", TRAIN_COLUMNS, start_step)
            self.eval_csv = _open_csv(output_dir / "val_metrics.csv", EVAL_COLUMNS, start_step)
            self.writer = _tensorboard_writer(output_dir / "tensorboard", start_step)

    def record(self, result: StepResult, seconds: float, state: TrainState) -> None:
        self.state = state
        self.history.append(result)
        self.step_seconds.append(seconds)
        self.pending.append((result, seconds))
        if result.step % self.interval == 0 or result.step == 1:
            self._flush()

    def _flush(self) -> None:
        done = [r for r, _ in self.pending if not r.skipped]
        last = self.pending[-1][0]
        row = {"step": last.step, "lr": last.lr, "skipped_steps": self.state.skipped_steps,
               "seconds_per_step": sum(s for _, s in self.pending) / len(self.pending)}
        if done:
            row["loss"] = sum(r.loss for r in done) / len(done)
            row["grad_norm"] = sum(r.grad_norm for r in done) / len(done)
            for name in LOSS_NAMES:
                values = [r.losses[name] for r in done if name in r.losses]
                if values:
                    row[name] = sum(values) / len(values)
        self.pending = []
        if self.enabled:
            self._write(self.train_csv, TRAIN_COLUMNS, row, "train")

    def record_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
            self._write(self.eval_csv, EVAL_COLUMNS, {"step": step, **metrics}, "val")

    def _write(self, handle, columns, row: dict, tag: str) -> None:
        file, writer = handle
        writer.writerow({key: row.get(key, "") for key in columns})
        file.flush()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"{tag}/{key}", value, row["step"])

    def close(self) -> None:
        if self.pending:  # the steps since the last interval
            self._flush()
        if self.enabled:
            self.train_csv[0].close()
            self.eval_csv[0].close()
            if self.writer is not None:
                self.writer.close()


def _open_csv(path: Path, columns: tuple[str, ...], start_step: int):
    """CSV for appending; on resume, rows of steps after the checkpoint (from the interrupted run)
    are dropped so that the file describes one run."""
    rows = []
    if start_step > 0 and path.is_file():
        with path.open(newline="") as file:
            rows = [row for row in csv.DictReader(file) if row.get("step") and int(row["step"]) <= start_step]
    file = path.open("w", newline="")
    writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    file.flush()  # the kept rows are on disk before the first new step
    return file, writer


def _tensorboard_writer(folder: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional for training itself
        log.warning("tensorboard not installed; logging to CSV only")
        return None
    # purge_step hides events of the interrupted run after the checkpoint we resume from
    return SummaryWriter(str(folder), purge_step=start_step + 1 if start_step > 0 else None)
