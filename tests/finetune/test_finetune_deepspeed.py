"""DeepSpeed ZeRO-2 and ZeRO-3, single process on the CPU, through the real CLI in a fresh process.

Every test here is marked slow: the first DeepSpeed use on a machine compiles two C++ extensions
(fused_adam and deepspeed_shm_comm, cached in ~/.cache/torch_extensions) inside whichever test runs
first: 215 s for the first test on 2 busy cores, against 18-35 s per test once they are built.

Each run must save complete weights: the adapter (LoRA + the trained projector) must equal, tensor
for tensor, the adapter of the same run without DeepSpeed. Under ZeRO-3 every parameter is
partitioned, so a save without gathering would hold empty placeholders.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from encslim.finetune.train import finetune

RUN = ["--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--seed", "0"]
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, ft_data, tmp_path_factory):
    """The same run without DeepSpeed, in this process."""
    out = tmp_path_factory.mktemp("nods") / "out"
    finetune(tiny_model_dir("A1"), ft_data, out, max_steps=4, batch_size=4, lr=1e-3, seed=0, progress=False)
    return out


def _run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # encslim sets them itself
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "encslim.cli", "finetune", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


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
def test_zero2_single_process_cpu(tiny_model_dir, ft_data, tmp_path, reference):
    out = tmp_path / "z2"
    result = _run_cli(tiny_model_dir("A1"), "--data", ft_data, "--out", out, "--deepspeed", "zero2", *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["deepspeed"] == {"file": "zero2", "stage": 2} and summary["steps"] == 4
    _assert_same_adapter(out, reference)
    assert _losses(out) == pytest.approx(_losses(reference), abs=1e-5)


@pytest.mark.slow
def test_zero3_single_process_cpu_saves_complete_weights_and_merges(tiny_model_dir, ft_data, tmp_path, reference):
    from peft import PeftModel

    from encslim.models.families.native.modeling import EncslimForConditionalGeneration
    from encslim.models.families.native.processing import EncslimProcessor

    from PIL import Image

    base_dir, out = tiny_model_dir("A1"), tmp_path / "z3"
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                  "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
                                  "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 3}}))
    result = _run_cli(base_dir, "--data", ft_data, "--out", out, "--deepspeed", config, "--merge", *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
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
def test_torchrun_two_processes_zero3_saves_complete_weights(tiny_model_dir, ft_data, tmp_path, reference):
    out = tmp_path / "tr"
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "encslim.cli", "finetune",
           str(tiny_model_dir("A1")), "--data", str(ft_data), "--out", str(out), "--deepspeed", "zero3", *RUN]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 4 steps") == 1  # only rank 0 reports and writes
    saved, expected = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in expected.items()}
    assert all(saved[k].abs().max() > 1e-4 for k in saved if "lora_B" in k)
