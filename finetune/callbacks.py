"""Trainer callbacks: the loss log (JSONL), a progress bar, the dropout epoch, checkpoint digests, step timing;
the loss plot."""

import json
import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

LOG_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")


class LossLog(TrainerCallback):
    """Append one JSON line per logged step (``step``, ``loss``, ``learning_rate``, ``grad_norm``, ``epoch``).

    On resume, lines after the checkpoint's step are dropped first, so the file holds one curve.
    """

    def __init__(self, path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        rows = [r for r in read_log(self.path) if r["step"] <= state.global_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"step": state.global_step, **{k: float(logs[k]) for k in LOG_KEYS if k in logs}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        logger.info("step %d loss %.4f", row["step"], row["loss"])


def read_log(path):
    """The rows of a loss log (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ProgressBar(TrainerCallback):
    """A tqdm bar over the optimizer steps with the last loss; on the main process only."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class DropoutEpoch(TrainerCallback):
    """Tell the collator the epoch, so encoder-dropout draws depend on (seed, epoch, batch)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(math.floor((state.epoch or 0.0) + 1e-6))


class CheckpointDigest(TrainerCallback):
    """After every checkpoint save, record the sha256 of its files (:func:`.saving.record_checkpoint`), so
    that ``--resume`` only continues from checkpoints this run wrote. Rank 0 records, once every
    process has written its part (DeepSpeed shards, per-rank RNG states)."""

    def __init__(self, record):
        self.record = Path(record)

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from .saving import record_checkpoint

        _barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                record_checkpoint(folder, self.record)
        _barrier()  # no process goes on (and may be interrupted) before the record is written


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class StepTimer(TrainerCallback):
    """Wall-clock seconds between consecutive optimizer-step ends (data, forward, backward, update).

    The first step (warm-up, measured from nothing) is not recorded.
    """

    def __init__(self):
        self.times = []
        self._last = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def plot_loss(rows, path, title="fine-tuning loss"):
    """Write a PNG of loss against step.

    Args:
        rows: loss-log rows (``step``, ``loss``).
        path: the PNG to write.
        title: the plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="." if len(rows) < 60 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
