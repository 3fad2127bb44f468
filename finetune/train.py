"""Recovery fine-tuning with the HF Trainer, peft LoRA and (optionally) DeepSpeed ZeRO-2/3.

:func:`finetune` loads a model folder, checks data and options (every user error is raised
before the first training step), trains, and writes one output folder atomically:

* LoRA (default): the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``, the
  trained fusion inside it) plus the processor and tokenizer; with ``merge`` the folder is a
  plain model of the same architecture and the adapter sits in ``adapter/``;
* ``full``: a plain model folder;
* always ``finetune.json`` (options, data, parameter counts, losses), ``train_log.jsonl`` (loss
  per step) and ``loss.png``.

Checkpoints go to ``<out>.checkpoints/`` while training (removed on success), so an interrupted
run continues with ``resume``; the sha256 of every checkpoint's files is recorded as it is saved,
and ``resume`` refuses a checkpoint this run did not write or that changed since
(:func:`encslim.finetune.saving.check_checkpoint`).

Single process (CPU or one GPU)::

    encslim finetune MODEL --data train.jsonl --out OUT --lora-r 8 --max-steps 200
    encslim finetune MODEL --data train.jsonl --out OUT --deepspeed recipes/deepspeed/zero3.json

(without a launcher encslim sets ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` for a world of one). Several GPUs, with either launcher::

    deepspeed --num_gpus 8 --no_local_rank --module encslim.cli finetune MODEL --data train.json \\
        --out OUT --deepspeed recipes/deepspeed/zero3.json
    torchrun --nproc_per_node 8 -m encslim.cli finetune MODEL --data train.json --out OUT \\
        --deepspeed recipes/deepspeed/zero2.json

(``--no_local_rank``: the process reads ``LOCAL_RANK`` from the environment; the ``deepspeed``
launcher would otherwise insert ``--local_rank=N`` before the sub-command.) Both commands were
run with two CPU processes (``deepspeed`` with ZeRO-2, ``torchrun`` with ZeRO-3; the test suite
runs the latter, marked slow); ``--batch-size`` is per process.
Every process reads the data and (with cached features) encodes it once; only rank 0 writes
the output folder.
"""

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_output_dir, check_output_path, sha256_file
from ..provenance import StageRecord, write_manifest
from .callbacks import CheckpointDigest, DropoutEpoch, LossLog, ProgressBar, plot_loss, read_log
from .config import FinetuneConfig
from .inputs import data_paths, load_training_samples, model_examples
from .saving import DIGEST_FILE, check_checkpoint, check_saved, expected_saved

logger = logging.getLogger(__name__)

SUMMARY_FILE = "finetune.json"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
ADAPTER_SUBDIR = "adapter"
RUN_CONFIG = "run_config.json"
LOSS_WINDOW = 5  # logged steps averaged for the start and end loss of the summary
# library deprecation notices repeated every step (torch.distributed under DeepSpeed, transformers)
NOISY_WARNINGS = (r"torch\.distributed", r"transformers\.modeling_utils")


def work_dir(out):
    """The folder holding checkpoints of a run writing ``out``: ``<out>.checkpoints``."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def finetune(model_path, data, out, config=None, overwrite=False, callbacks=(), **options):
    """Fine-tune a model folder on image-question-answer data and write ``out``.

    Args:
        model_path: a model folder any adapter loads (native encslim, ...).
        data: data file path(s) (``.jsonl``, ``.json`` LLaVA, ``.tsv``) or a list of ``Sample``.
        out: the output folder (must not exist unless ``overwrite``).
        config: a :class:`FinetuneConfig` or a dict of its fields (default: LoRA r=8 on q_proj,v_proj, one
            epoch).
        overwrite: replace an existing ``out``.
        callbacks: extra ``transformers.TrainerCallback`` objects (benchmarks, tests).
        **options: :class:`FinetuneConfig` fields overriding ``config`` (``lora_r=16, merge=True``...).

    Returns:
        The summary dict written to ``finetune.json`` (``None`` on ranks other than 0). Its ``loss_rose``
        (the smoothed loss ended above where it started) is reported by the caller, once, next to the
        figures it prints (:func:`loss_rose_message`); nothing is logged here, so no run warns twice.

    Raises:
        ConfigError: bad options, a LoRA target matching nothing, a bad DeepSpeed file, an
            output that exists, or checkpoints to resume that are missing or unexpected.
        DataError: bad data (no answers, no images, image-token count mismatch...).
        ModelLoadError: a folder that does not hold a loadable model.
        VerificationError: the saved weights are incomplete.
    """
    config = FinetuneConfig.build(config, **options)
    with _distributed_env(config):
        return _finetune(model_path, data, out, config, overwrite, callbacks)


def _finetune(model_path, data, out, config, overwrite, callbacks):
    """:func:`finetune` once its config is built (and, for DeepSpeed, the distributed variables set)."""
    import torch

    source, model_path = model_path, Path(model_path).resolve()  # a ModelFolder keeps its encoder folders
    paths = data_paths(data)
    teacher_path = _teacher_path(config)
    check_output_path(out, overwrite, inputs=[model_path, *paths, *([teacher_path] if teacher_path else [])])
    work = work_dir(out)
    resume_from = _resume_point(work, config)
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed warns on every import that it fell back to CPU
    ds_config = _deepspeed(config)
    samples = load_training_samples(data, paths)
    model, processor, adapter = _load(source, torch)
    examples = _examples(model, processor, adapter, samples, config)
    torch.manual_seed(config.seed)
    features = _features(model, processor, adapter, examples, config)
    targets = _teacher_targets(teacher_path, samples, model, processor, adapter, examples, config)
    from .trainable import prepare_trainable

    with warnings.catch_warnings():
        for module in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        model, parts = prepare_trainable(model, adapter, config)
        expected = expected_saved(model, config)
        trainer, collator = _trainer(model, processor, adapter, examples, features, config, ds_config, work,
                                     callbacks, targets)
        _write_run_config(work, config)
        started = time.time()
        final = work / "final"
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        runtime = time.time() - started
        trainer.save_model(str(final))
    if not trainer.is_world_process_zero():
        return None
    check_saved(final, expected)
    info = {"model": str(model_path), "slots": adapter.slot_names(_base(model).config),
            "data": [{"path": str(p), "sha256": sha256_file(p)} for p in paths],
            "samples": len(examples), "parts": parts, "features_cached": features is not None,
            "deepspeed": {"file": str(config.deepspeed), "stage": _stage(ds_config)} if ds_config else None,
            "steps": trainer.state.global_step, "train_runtime_s": round(runtime, 3),
            "world_size": trainer.args.world_size,
            "samples_seen": samples_seen(trainer.state.global_step, config, trainer.args.world_size, len(examples)),
            "distill": _distill_info(teacher_path, targets, trainer, config),
            "token_budget": _token_budget(adapter, _base(model).config)}
    summary = _write_output(final, work, out, overwrite, model_path, paths, config, info)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _token_budget(adapter, config):
    """The token budget training ran under (the model folder's own: its processor wrote the reduced placeholder
    count and its model reduced the image tokens), with the image tokens per image; ``None``: every token."""
    from ..models.tokens import budget_of

    budget = budget_of(config)
    return None if budget is None else {**budget.to_dict(), "image_tokens": adapter.image_tokens(config)}


def _base(model):
    """The model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _load(model_path, torch):
    from ..models.loading import load_model

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    model, processor, adapter = load_model(model_path, device=device)
    return model, processor, adapter


def _examples(model, processor, adapter, samples, config):
    return model_examples(model, processor, adapter, samples, config.prompt_format)


def _teacher_path(config):
    """The folder to distil from (resolved), or ``None``; refuses one that is not a folder."""
    if not config.distill_from:
        return None
    path = Path(config.distill_from).resolve()
    if not (path / "config.json").is_file():
        raise ConfigError(f"--distill-from {config.distill_from} is not a model folder (no config.json); pass the "
                          "full model the student was pruned from")
    return path


def _teacher_targets(teacher_path, samples, model, processor, adapter, examples, config):
    """The full model's answer distributions over the training examples, computed once (or ``None``)."""
    if teacher_path is None:
        return None
    from .distill import compute_teacher_targets

    def build(samples, t_processor, t_adapter, teacher):
        return model_examples(teacher, t_processor, t_adapter, samples, config.prompt_format)

    device = next(model.parameters()).device
    return compute_teacher_targets(teacher_path, samples, (model, processor, adapter, examples), config, build,
                                   device=device)


def _distill_info(teacher_path, targets, trainer, config):
    """What ``finetune.json`` records of a distilled run (``None`` without one)."""
    if targets is None:
        return None
    parts = getattr(trainer, "distill_parts", [])
    kls = [p["kl"] for p in parts]
    k = max(1, min(LOSS_WINDOW, len(kls) // 4)) if kls else 0
    return {"teacher": str(teacher_path), "temperature": config.distill_temperature, "weight": config.distill_weight,
            "hidden_weight": config.distill_hidden_weight, "hidden": getattr(targets, "hidden_note", "off"),
            "stored": "full vocabulary" if targets.top_k is None else f"top-{targets.top_k} + tail",
            "targets": targets.mode, "teacher_examples": targets.computed,
            "vocab_size": targets.vocab_size, "targets_mb": round(targets.nbytes / 1e6, 3),
            "kl_start": sum(kls[:k]) / k if kls else None, "kl_end": sum(kls[-k:]) / k if kls else None}


def _features(model, processor, adapter, examples, config):
    if not config.features_cacheable:
        if config.cache_features:
            logger.info("encoders are trained, so features are recomputed every step (no cache)")
        return None
    from .features import compute_features

    return compute_features(model, processor, adapter, examples, config.feature_batch_size,
                            progress=_progress(config))


def _deepspeed(config):
    if not config.deepspeed:
        return None
    import torch

    from .ds_config import load_deepspeed_config, prepare_deepspeed

    # on the CPU nothing is compiled; where a build may happen, a stale build lock stops the run here
    return prepare_deepspeed(load_deepspeed_config(config.deepspeed), cuda=torch.cuda.is_available())


@contextlib.contextmanager
def _distributed_env(config):
    """For a DeepSpeed run without a launcher: the variables a launcher would set, for the run only.

    DeepSpeed always initialises ``torch.distributed``; this process becomes rank 0 of a world of 1
    (:func:`~encslim.finetune.ds_config.ensure_distributed_env`). When the run ends, however it ends, the
    variables it set are removed and the process group it started is destroyed, so a later run in the
    same process (a plain Trainer run, which would read them as a launcher's) starts clean.
    """
    if not config.deepspeed:
        yield
        return
    from .ds_config import ensure_distributed_env

    added = ensure_distributed_env()
    if added:
        logger.info("single-process DeepSpeed: set %s", ", ".join(f"{k}={v}" for k, v in added.items()))
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        if added:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def _stage(ds_config):
    from .ds_config import zero_stage

    return zero_stage(ds_config)


def _progress(config):
    return config.progress if config.progress is not None else sys.stderr.isatty()


def _resume_point(work, config):
    """The checkpoint to resume from, or None; refuses stale checkpoints and a resume without any."""
    checkpoints = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if (work / "checkpoints").is_dir() else []
    if config.resume:
        if not checkpoints:
            raise ConfigError(f"nothing to resume: {work} holds no checkpoint; run without --resume")
        _check_same_run(work, config)
        check_checkpoint(checkpoints[-1], work / DIGEST_FILE)  # before anything unpickles it
        return checkpoints[-1]
    if checkpoints:
        raise ConfigError(f"{work} holds checkpoints of an interrupted run; pass --resume to continue it "
                          "or delete that folder to start over")
    return None


def _comparable(config):
    return {k: v for k, v in config.to_dict().items() if k not in ("resume", "progress", "learning_rate")}


def _check_same_run(work, config):
    path = work / RUN_CONFIG
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(_comparable(config)))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"--resume with different options ({', '.join(changed)}) than the interrupted run; "
                          "resume with the same options or delete " + str(work))


def _write_run_config(work, config):
    if int(os.environ.get("RANK", "0")) != 0:
        return
    work.mkdir(parents=True, exist_ok=True)
    (work / RUN_CONFIG).write_text(json.dumps(_comparable(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _trainer(model, processor, adapter, examples, features, config, ds_config, work, callbacks, targets=None):
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .collator import FinetuneCollator, IndexDataset
    from .trainer import EncslimTrainer

    base = _base(model)
    slots = adapter.slot_names(base.config)
    if config.encoder_dropout > 0 and len(slots) < 2:
        logger.warning("--encoder-dropout has no effect on a model with one encoder slot")
    collator = FinetuneCollator(
        examples, processor, adapter, base.config, adapter.tokenizer(processor).pad_token_id, features=features,
        encoder_dropout=config.encoder_dropout, seed=config.seed, targets=targets,
    )
    args = TrainingArguments(
        output_dir=str(work / "checkpoints"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        max_steps=config.max_steps or -1, num_train_epochs=config.epochs, lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, logging_steps=1,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2, seed=config.seed,
        data_seed=config.seed, report_to="none", remove_unused_columns=False, label_names=["labels"],
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(), deepspeed=ds_config, bf16=config.bf16,
        dataloader_num_workers=0, ddp_find_unused_parameters=config.encoder_dropout > 0,
    )
    own = [LossLog(work / LOG_FILE), ProgressBar(_progress(config)), DropoutEpoch(collator),
           CheckpointDigest(work / DIGEST_FILE)]
    trainer = EncslimTrainer(adapter=adapter, distill=config if targets is not None else None, model=model, args=args, train_dataset=IndexDataset(len(examples)),
                             data_collator=collator, processing_class=processor, callbacks=own + list(callbacks))
    for default in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(default)
    return trainer, collator


def _write_output(final, work, out, overwrite, model_path, paths, config, info):
    """Assemble the output folder atomically from the saved weights, the log and the plot."""
    rows = read_log(work / LOG_FILE)
    losses = [r["loss"] for r in rows]
    summary = {"schema_version": 1, **info, "config": config.to_dict(), "threads": _threads(),
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "loss": losses[-1] if losses else None, **smoothed_losses(losses),
               "merged": False}
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_path, *paths]) as tmp:
        target = tmp / ADAPTER_SUBDIR if config.merge else tmp
        shutil.copytree(final, target, dirs_exist_ok=True)
        for name in ("README.md", "training_args.bin"):
            (target / name).unlink(missing_ok=True)
        if config.merge:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            from .merge import write_merged

            unset_hf_deepspeed_config()  # the base model must load whole, not ZeRO-3 partitioned
            summary["merge"] = write_merged(target, tmp, base=model_path)
            summary["merged"] = True
        if rows:
            shutil.copy(work / LOG_FILE, tmp / LOG_FILE)
            plot_loss(rows, tmp / PLOT_FILE)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _manifest(tmp, model_path, summary)
    logger.info("wrote %s (%d steps, %d samples seen, smoothed loss %s -> %s)", out, info["steps"],
                info["samples_seen"], summary["loss_start"], summary["loss_end"])
    return summary


def smoothed_losses(losses, window=LOSS_WINDOW):
    """Start and end loss as the mean of the first and last ``k`` logged steps (``k`` = ``window``, at
    most a quarter of the steps, at least 1), and whether the loss rose.

    Returns:
        dict: ``loss_start``, ``loss_end``, ``loss_window`` (k), ``loss_rose`` (end above start).
    """
    if not losses:
        return {"loss_start": None, "loss_end": None, "loss_window": 0, "loss_rose": False}
    k = max(1, min(window, len(losses) // 4))
    start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"loss_start": start, "loss_end": end, "loss_window": k, "loss_rose": end > start}


def samples_seen(steps, config, world_size, n_samples):
    """Training samples the run went through: steps x batch size x gradient accumulation x world size,
    capped at ``epochs`` passes over the data when no ``max_steps`` was given (the last batch may be short).
    With ``max_steps`` the data repeats, so samples may be seen more than once."""
    seen = steps * config.batch_size * config.grad_accum * max(1, world_size)
    if not config.max_steps:
        seen = min(seen, math.ceil(config.epochs * n_samples))
    return seen


def loss_rose_message(summary):
    """The warning printed when the smoothed loss ends above where it started."""
    return (f"the loss rose during fine-tuning ({summary['loss_start']:.4f} -> {summary['loss_end']:.4f}, mean of "
            f"the first/last {summary['loss_window']} logged step(s)); check the learning rate (--lr) and the data, "
            "and compare the model against its source before using it")


def _threads():
    """The torch thread count training ran with, and how it was chosen (for finetune.json)."""
    import torch

    from ..runtime import thread_choice

    return thread_choice() or {"threads": torch.get_num_threads(), "source": "torch default"}


def _manifest(folder, model_path, summary):

    verification = {"saved_weights": "complete", **({"merge": summary["merge"]} if summary["merged"] else {})}
    brief = {k: summary[k] for k in ("steps", "samples", "samples_seen", "loss_first", "loss_last", "loss_start",
                                     "loss_end", "loss_window", "loss_rose", "merged", "deepspeed", "data")}
    write_manifest(folder, StageRecord("finetune", kept=summary["slots"], verification=verification), source=model_path,
                   extra={"finetune": {**brief, "config": summary["config"], "parts": summary["parts"]}})
