"""DeepSpeed configuration files: read, check, and the single-process environment.

encslim ships ``recipes/deepspeed/zero2.json`` and ``zero3.json`` with ``"auto"`` values, which the
HF Trainer fills from the training arguments (batch size, learning rate, clipping...). A file is
checked before anything is loaded: it must be a JSON object whose keys DeepSpeed knows (a typo
such as ``zero_optimisation`` would otherwise be ignored silently), with a ZeRO stage 0-3.

Under ZeRO-3 every parameter is partitioned across processes; the adapter and projector saved
at the end are gathered only with ``stage3_gather_16bit_weights_on_model_save: true``, otherwise
the files hold empty placeholders. encslim turns it on when the key is absent and refuses a
file that sets it to false.
"""

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
