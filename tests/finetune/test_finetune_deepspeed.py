"""DeepSpeed ZeRO-2 and ZeRO-3 on the CPU through the real CLI in a fresh process, and the build lock check.

On the CPU DeepSpeed compiles nothing (torch's AdamW and torch.distributed's collectives instead of its fused_adam
and deepspeed_shm_comm extensions): every run here points ``TORCH_EXTENSIONS_DIR`` at an empty folder and checks that
it stays empty, so a fresh machine runs these tests as fast as one with a warm extension cache. The runs are marked
slow (20-40 s each on 2 idle cores, more with the reference run and under load); the lock tests are fast.

Each run must save complete weights: the adapter (LoRA + the trained projector) must equal, tensor
for tensor, the adapter of the same run without DeepSpeed. Under ZeRO-3 every parameter is
partitioned, so a save without gathering would hold empty placeholders.
"""

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from encslim.errors import BuildLockError
from encslim.finetune.build_locks import check_build_locks, stale_locks
from encslim.finetune.ds_config import load_deepspeed_config, prepare_deepspeed
from encslim.finetune.train import finetune

from .conftest import run_logged

RUN = ["--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--seed", "0"]
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, ft_data, tmp_path_factory):
    """The same run without DeepSpeed, in this process."""
    out = tmp_path_factory.mktemp("nods") / "out"
    finetune(tiny_model_dir("A1"), ft_data, out, max_steps=4, batch_size=4, lr=1e-3, seed=0, progress=False)
    return out


def _env(extensions=None):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # encslim sets them itself
    env["OMP_NUM_THREADS"] = "1"
    if extensions is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    return env


def _run_cli(*args, extensions=None):
    """``encslim finetune ARGS`` in a fresh process (a hang fails with its output); ``extensions``: the
    ``TORCH_EXTENSIONS_DIR`` it gets (default: this process's)."""
    return run_logged([sys.executable, "-m", "encslim.cli", "finetune", *args], env=_env(extensions))


@pytest.fixture
def extensions(tmp_path):
    """An empty ``TORCH_EXTENSIONS_DIR`` for one run; the test checks that nothing was built in it."""
    folder = tmp_path / "torch_extensions"
    folder.mkdir()
    return folder


def _built(extensions):
    return sorted(p.name for p in extensions.iterdir())


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _assert_same_adapter(folder, reference):
    """Same keys and shapes, values within 1e-4: far below one Adam step at lr 1e-3, which every trained
    tensor moved by (summation order and the DeepSpeed optimizer differ in the last bits)."""
    saved = load_file(folder / "adapter_model.safetensors")
    expected = load_file(reference / "adapter_model.safetensors")
    assert saved.keys() == expected.keys()
    assert any(k.startswith("base_model.model.fusion.") for k in saved)  # the projector is in the adapter
    assert all(saved[k].abs().max() > 1e-4 for k in saved if "lora_B" in k)  # zero-initialised, then trained
    for key, value in expected.items():
        assert saved[key].shape == value.shape and saved[key].numel() > 0, key
        assert torch.allclose(saved[key], value, atol=1e-4), (key, float((saved[key] - value).abs().max()))


@pytest.mark.slow
def test_zero2_single_process_cpu_compiles_nothing(tiny_model_dir, ft_data, tmp_path, reference, extensions):
    out = tmp_path / "z2"
    result = _run_cli(tiny_model_dir("A1"), "--data", ft_data, "--out", out, "--deepspeed", "zero2", *RUN,
                      extensions=extensions)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _built(extensions) == []  # no extension build started (no fused_adam/, no deepspeed_shm_comm/)
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["deepspeed"] == {"file": "zero2", "stage": 2} and summary["steps"] == 4
    _assert_same_adapter(out, reference)
    assert _losses(out) == pytest.approx(_losses(reference), abs=1e-5)


@pytest.mark.slow
def test_zero3_single_process_cpu_saves_complete_weights_and_merges(tiny_model_dir, ft_data, tmp_path, reference,
                                                                   extensions):
    from peft import PeftModel

    from encslim.models.families.native.modeling import EncslimForConditionalGeneration
    from encslim.models.families.native.processing import EncslimProcessor

    from PIL import Image

    base_dir, out = tiny_model_dir("A1"), tmp_path / "z3"
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                  "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
                                  "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 3}}))
    result = _run_cli(base_dir, "--data", ft_data, "--out", out, "--deepspeed", config, "--merge", *RUN,
                      extensions=extensions)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _built(extensions) == []
    assert json.loads((out / "finetune.json").read_text())["deepspeed"]["stage"] == 3
    _assert_same_adapter(out / "adapter", reference)

    processor = EncslimProcessor.from_pretrained(out)
    batch = dict(processor(text=[processor.build_prompt("What colour is the square?")],
                           images=[Image.new("RGB", (64, 64), (30, 190, 30))]))
    adapted = PeftModel.from_pretrained(EncslimForConditionalGeneration.from_pretrained(base_dir), reference).eval()
    merged = EncslimForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        assert (merged(**batch).logits - adapted(**batch).logits).abs().max() < 1e-5


@pytest.mark.slow
def test_torchrun_two_processes_zero3_saves_complete_weights(tiny_model_dir, ft_data, tmp_path, reference,
                                                             extensions):
    out = tmp_path / "tr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "encslim.cli", "finetune",
           tiny_model_dir("A1"), "--data", ft_data, "--out", out, "--deepspeed", "zero3", *RUN]
    result = run_logged(cmd, env=_env(extensions))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _built(extensions) == []  # gloo collectives, not DeepSpeed's compiled shared-memory ones
    assert result.stdout.count("trained 4 steps") == 1  # only rank 0 reports and writes
    saved, expected = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in expected.items()}
    assert all(saved[k].abs().max() > 1e-4 for k in saved if "lora_B" in k)


# ---------------------------------------------------------------------------------------- build locks (fast)
def _plant_lock(extensions, name="fused_adam"):
    """What a build killed half-way leaves: its folder with the lock file, which no process holds."""
    lock = extensions / name / "lock"
    lock.parent.mkdir()
    lock.touch()
    return lock


def test_a_lock_is_stale_only_while_no_process_holds_it(extensions):
    lock = _plant_lock(extensions)
    fd = os.open(lock, os.O_RDONLY)  # as torch's FileBaton holds it during a build
    try:
        assert stale_locks(extensions) == []
        check_build_locks(extensions)
    finally:
        os.close(fd)
    assert stale_locks(extensions) == [lock]
    with pytest.raises(BuildLockError) as err:
        check_build_locks(extensions)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"stale C++ extension build lock {lock}:")
    assert f"rm {lock}" in message


def test_gpu_path_checks_locks_cpu_path_compiles_nothing(extensions, monkeypatch):
    """On a GPU DeepSpeed keeps its fused Adam, so a stale lock stops the run; on the CPU the shipped files run
    torch's AdamW, which builds nothing, so the same lock does not matter."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    lock = _plant_lock(extensions)
    shipped = load_deepspeed_config("zero2")
    with pytest.raises(BuildLockError, match=f"rm {lock}"):
        prepare_deepspeed(shipped, cuda=True)
    cpu = prepare_deepspeed(shipped, cuda=False)
    assert cpu["optimizer"]["params"]["torch_adam"] is True and cpu["zero_force_ds_cpu_optimizer"] is False
    assert "torch_adam" not in shipped["optimizer"]["params"]  # the loaded dict is left as it was
    import deepspeed.ops

    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False


def test_cli_stops_on_a_stale_lock_before_loading_anything(tiny_model_dir, ft_data, tmp_path, extensions):
    """A CPU run whose file asks for DeepSpeed's own Adam (``torch_adam: false``) would compile fused_adam and wait
    on the lock forever; it stops at once with one line naming the lock, exit 2."""
    lock = _plant_lock(extensions)
    config = tmp_path / "fused.json"
    config.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "torch_adam": False}},
                                  "zero_optimization": {"stage": 2}}))
    result = _run_cli(tiny_model_dir("A1"), "--data", ft_data, "--out", tmp_path / "out", "--deepspeed", config,
                      *RUN, extensions=extensions)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith(f"error: stale C++ extension build lock {lock}:") and f"rm {lock}" in lines[-1]
    assert not (tmp_path / "out").exists() and _built(extensions) == ["fused_adam"] and lock.exists()
