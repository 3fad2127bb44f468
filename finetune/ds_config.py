"""DeepSpeed configuration files: read, check, and the single-process environment.

encslim ships ``recipes/deepspeed/zero2.json`` and ``zero3.json`` with ``"auto"`` values, which the
HF Trainer fills from the training arguments (batch size, learning rate, clipping...). A file is
checked before anything is loaded: it must be a JSON object whose keys DeepSpeed knows (a typo
such as ``zero_optimisation`` would otherwise be ignored silently), with a ZeRO stage 0-3.

Under ZeRO-3 every parameter is partitioned across processes; the adapter and projector saved
at the end are gathered only with ``stage3_gather_16bit_weights_on_model_save: true``, otherwise
the files hold empty placeholders. encslim turns it on when the key is absent and refuses a
file that sets it to false.

On the CPU nothing is compiled (:func:`prepare_deepspeed`): DeepSpeed's Adam kernels and its shared-memory
collectives are C++ extensions it would build on first use (minutes on a small machine, and a build killed
half-way leaves a lock that makes every later run wait), so a CPU run takes torch's own AdamW and
torch.distributed's gloo collectives. On a GPU DeepSpeed's fused optimizers stay, and a stale build lock is
refused before anything loads (:mod:`encslim.finetune.build_locks`).
"""

import copy
import difflib
import json
import os
import socket
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

TOP_LEVEL_KEYS = frozenset("""
train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps optimizer scheduler fp16 bf16
bfloat16 amp torch_autocast gradient_clipping prescale_gradients gradient_predivide_factor gradient_allreduce_op
sparse_gradients zero_optimization zero_allow_untested_optimizer zero_force_ds_cpu_optimizer steps_per_print
wall_clock_breakdown dump_state memory_breakdown disable_allgather communication_data_type
seq_parallel_communication_data_type activation_checkpointing flops_profiler tensorboard wandb csv_monitor comet
comms_logger aio checkpoint data_types elasticity autotuning compression_training data_efficiency
curriculum_learning progressive_layer_drop eigenvalue pipeline sparse_attention nebula hybrid_engine
weight_quantization compile timers quantize_training dataloader_drop_last disable_python_gc
use_data_before_expert_parallelism vocabulary_size tensor_parallel sequence_parallel_size zenflow
""".split())
EXTRA_ZERO_KEYS = frozenset({"mics_shard_size", "mics_hierarchical_params_gather"})
GATHER_KEY = "stage3_gather_16bit_weights_on_model_save"
SHIPPED = ("zero2", "zero3")
TORCH_BACKED = frozenset({"adam", "adamw"})  # optimizer types DeepSpeed builds from torch.optim with torch_adam
SHM_COMM_OP = "deepspeed_shm_comm"  # DeepSpeed's compiled shared-memory collectives for CPU process groups


def shipped_config(name):
    """Path of a shipped DeepSpeed file: ``zero2`` or ``zero3``."""
    if name not in SHIPPED:
        raise ConfigError(f"no shipped DeepSpeed config '{name}'; use one of {', '.join(SHIPPED)}")
    return Path(str(resources.files("encslim.recipes") / "deepspeed" / f"{name}.json"))


def zero_keys():
    """Every key DeepSpeed's ``zero_optimization`` section accepts (field names and aliases)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    keys = set(EXTRA_ZERO_KEYS)
    for name, info in DeepSpeedZeroConfig.model_fields.items():
        keys.add(name)
        if info.alias:
            keys.add(info.alias)
    return keys


def load_deepspeed_config(path):
    """Read and check a DeepSpeed JSON file; returns the dict to hand to the Trainer.

    Args:
        path: the JSON file, or ``zero2`` / ``zero3`` for the shipped ones.

    Returns:
        dict (a copy; the file is not modified), with the ZeRO-3 gather switch on.

    Raises:
        ConfigError: a missing file, invalid JSON, not an object, unknown keys (with a "did you
            mean"), a bad ZeRO stage, or ZeRO-3 with the save-time gather turned off.
    """
    path = shipped_config(path) if str(path) in SHIPPED else Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found; pass a JSON file such as recipes/deepspeed/zero2.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON (line {err.lineno}: {err.msg}); fix the file") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object, not a {type(data).__name__}")
    problems = _unknown(data, TOP_LEVEL_KEYS, "")
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append("zero_optimization must be an object")
        zero = {}
    problems += _unknown(zero, zero_keys(), "zero_optimization.")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if stage == 3 and zero.get(GATHER_KEY, True) is False:
        problems.append(f"zero_optimization.{GATHER_KEY} is false, so ZeRO-3 would save empty placeholder weights; "
                        "set it to true")
    if problems:
        raise ConfigError(f"DeepSpeed config {path}: {'; '.join(problems)}")
    if stage == 3:
        data["zero_optimization"] = dict(zero, **{GATHER_KEY: True})
    return data


def _unknown(section, known, prefix):
    problems = []
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{prefix}{key}'{hint}")
    return problems


def zero_stage(ds_config):
    """The ZeRO stage of a checked DeepSpeed dict (0 when absent)."""
    return (ds_config or {}).get("zero_optimization", {}).get("stage", 0)


def ensure_distributed_env():
    """Set the distributed variables a launcher would set, for a single process; keep present ones.

    DeepSpeed always initialises ``torch.distributed``; run without a launcher (``deepspeed`` or
    ``torchrun``), this process becomes rank 0 of a world of 1 on a free local port.

    Returns:
        dict of the variables that were set (empty under a launcher).
    """
    wanted = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    if "MASTER_PORT" not in os.environ:
        wanted["MASTER_PORT"] = str(_free_port())
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    return added


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_deepspeed(ds_config, cuda):
    """Make a checked DeepSpeed dict ready for this machine; call before the Trainer initialises DeepSpeed.

    On the CPU: torch's optimizer (:func:`cpu_config`) and torch.distributed's collectives
    (:func:`use_torch_collectives`), so nothing is compiled. Where a build may still happen (any GPU run, or a
    CPU run whose file asks for a DeepSpeed-only optimizer), a stale extension build lock stops the run first.

    Args:
        ds_config: the dict from :func:`load_deepspeed_config`.
        cuda: whether the run uses CUDA.

    Returns:
        the dict to hand to the Trainer (a copy on the CPU).

    Raises:
        BuildLockError: a build lock that an interrupted build left and no process holds.
    """
    from ..runtime import deepspeed_in_use
    from .build_locks import check_build_locks

    deepspeed_in_use()  # the CLI hid DeepSpeed's log lines until now
    if not cuda:
        ds_config = cpu_config(ds_config)
    if cuda or compiles_optimizer(ds_config):
        check_build_locks()
    if not cuda:
        use_torch_collectives()
    return ds_config


def cpu_config(ds_config):
    """The DeepSpeed dict for a CPU run: torch's AdamW instead of DeepSpeed's compiled Adam.

    DeepSpeed builds Adam/AdamW from its C++ extensions (``fused_adam``; ``cpu_adam`` under ZeRO-Offload) unless
    the optimizer's ``torch_adam`` parameter asks for ``torch.optim.Adam``/``AdamW``, the optimizer of a run
    without DeepSpeed. ``zero_force_ds_cpu_optimizer: false`` lets ZeRO-Offload keep it, and a file without an
    optimizer section gets the Trainer's torch AdamW. Values the file sets are kept, and other optimizer types
    are left as written (see :func:`compiles_optimizer`).

    Args:
        ds_config: a checked DeepSpeed dict (not modified).

    Returns:
        a new dict.
    """
    data = copy.deepcopy(ds_config)
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("type", "")).lower() in TORCH_BACKED:
        optimizer["params"] = {**(optimizer.get("params") or {})}
        optimizer["params"].setdefault("torch_adam", True)
    data.setdefault("zero_force_ds_cpu_optimizer", False)
    return data


def compiles_optimizer(ds_config):
    """Whether DeepSpeed may compile an extension for the optimizer of a CPU run's dict (after :func:`cpu_config`):
    an optimizer type other than Adam/AdamW (Lamb, Lion, Adagrad under offload...) or ``torch_adam: false``."""
    optimizer = ds_config.get("optimizer")
    if not isinstance(optimizer, dict):
        return False
    params = optimizer.get("params") or {}
    return str(optimizer.get("type", "")).lower() not in TORCH_BACKED or params.get("torch_adam") is False


def use_torch_collectives():
    """Keep DeepSpeed's CPU process groups on torch.distributed's own collectives (gloo).

    Every DeepSpeed process group on the CPU accelerator first compiles DeepSpeed's shared-memory collectives
    (``deepspeed_shm_comm``) when ``deepspeed.ops.__compatible_ops__`` marks them buildable; that dict is probed once
    per process and edits to it persist, so marking the op unavailable makes DeepSpeed fall back to
    ``torch.distributed``, as it does on platforms without the op.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
