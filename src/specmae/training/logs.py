"""What a training run reports: the progress bar, run_dir/log.jsonl and TensorBoard (rank 0 only).

log.jsonl holds one JSON object per line, each with its optimizer `step`:

    {"event": "epoch", "step": 0, "epoch": 0, ...}          an epoch begins (a recipe's fields)
    {"step": 10, "epoch": 0, "loss": ..., "lr": ..., "samples_per_s": ...}
    {"event": "validation", "step": 31, "epoch": 0, ...}    a recipe's own record (Trainer.log)

A loss record is written every `train.log_every` steps, at the end of the schedule and where a
run stops early (max_steps). Its `loss` is the mean over the optimizer steps since the previous
loss record, `lr` the logged step's learning rate and `samples_per_s` the throughput of the steps
since then. The mean smooths the curve without hiding any step, and stays exact across a
resume: the running sum and count of the open interval are saved with every checkpoint
(`state`), so a resumed run logs the same lines as one that was never stopped. The record of a
run stopped by max_steps inside an interval is provisional: a resumed run drops it and writes
the interval's record at its end, over all its steps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..files import atomic_write_text, read_jsonl

log = logging.getLogger(__name__)


def _is_loss(record: dict) -> bool:
    return "loss" in record and "event" not in record


class TrainLogger:
    """Progress bar, JSON lines (run_dir/log.jsonl) and TensorBoard, on rank 0 only.

    total, initial  steps of the schedule, and the step this process starts from
    resuming        continuing a run: log.jsonl loses what was logged after step `initial`
    every           steps between loss records (train.log_every)
    state           `state()` of the checkpoint resumed from: the open interval's losses
    """

    def __init__(self, run_dir: Path, main: bool, progress: bool, total: int, initial: int, resuming: bool = False,
                 every: int = 1, state: dict | None = None):
        self.main, self.path = main, run_dir / "log.jsonl"
        self.total, self.every = total, every
        self.bar = self.tb = None
        # The open interval: the losses of the steps since the last loss record (saved with
        # checkpoints) and their wall time (not saved: a resumed run times its own steps).
        state = state or {}
        self.loss_sum, self.steps = float(state.get("loss_sum", 0.0)), int(state.get("steps", 0))
        self.seconds, self.samples = 0.0, 0
        if not main:
            return
        if resuming and self.path.is_file():
            # Drop what was logged after the checkpoint we resume from (all of it when the run had
            # none yet): those steps run again. Of the resumed step itself, the epoch record came
            # after its checkpoint, and a loss record there inside an open interval is the
            # provisional one of a run stopped at max_steps.
            keep = [r for r in read_jsonl(self.path) if isinstance(r.get("step"), int)
                    and (r["step"] < initial or r["step"] == initial and r.get("event") != "epoch"
                         and not (self.steps and _is_loss(r)))]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
            # Events from step initial + 1 on are dropped from display: they run again.
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=initial + 1 if resuming else None)
        except ImportError:
            log.info("tensorboard not installed; logging to %s only", self.path)

    def state(self) -> dict:
        """The open interval's losses, for the checkpoint: a run resumed from it logs the same mean."""
        return dict(loss_sum=self.loss_sum, steps=self.steps)

    def record(self, record: dict, prefix: str = "train", tb_step: int | None = None) -> None:
        """One line of log.jsonl; its numbers but step and epoch to TensorBoard at `tb_step` (default: step)."""
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"] if tb_step is None else tb_step)

    def image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) uint8 image into TensorBoard at `step` (rank 0, when tensorboard is installed)."""
        if self.tb:
            self.tb.add_image(tag, image, step, dataformats="HWC")
            self.tb.flush()

    def epoch(self, step: int, epoch: int, fields: dict) -> None:
        self.record(dict(event="epoch", step=step, epoch=epoch, **fields), tb_step=epoch)
        if self.main:
            log.info("epoch %d%s", epoch, "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}"
                                                  for k, v in fields.items()))

    def step(self, step: int, epoch: int, loss: float, lr: float, samples: int, seconds: float,
             stop: bool = False) -> None:
        """Optimizer step `step` is done: `loss` of its `samples`, trained in `seconds`. A loss record
        closes the interval every `every` steps and at the end of the schedule; `stop` (the run
        stops here, at max_steps) writes a provisional one and leaves the interval open."""
        if not self.main:
            return
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        self.seconds, self.samples = self.seconds + seconds, self.samples + samples
        closes = step % self.every == 0 or step == self.total
        if closes or stop:
            mean, throughput = self.loss_sum / self.steps, self.samples / max(self.seconds, 1e-9)
            self.record(dict(step=step, epoch=epoch, loss=mean, lr=lr, samples_per_s=throughput))
            if self.bar:
                self.bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", sps=f"{throughput:.1f}", refresh=False)
            self.seconds, self.samples = 0.0, 0
            if closes:
                self.loss_sum, self.steps = 0.0, 0
        if self.bar:
            self.bar.update(1)

    def close(self) -> None:
        """End the bar and TensorBoard; later records still go to log.jsonl."""
        if self.bar:
            self.bar.close()
        if self.tb:
            self.tb.close()
        self.bar = self.tb = None
