"""End-to-end fine-tuning on CPU: the CLI acceptance run, merge, determinism, resume, cache, full mode, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from encslim.errors import ConfigError
from encslim.finetune.callbacks import read_log
from encslim.finetune.train import finetune, work_dir
from encslim.provenance import read_manifest
from ..conftest import run_main as _cli


def _error_line(stderr):
    """The one ``error:`` line of a failed command (library progress bars may share stderr)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _batch(model_dir):
    from PIL import Image

    from encslim.models.families.native.processing import EncslimProcessor

    processor = EncslimProcessor.from_pretrained(model_dir)
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    return dict(processor(text=[processor.build_prompt("What colour is the square?")] * 2, images=images))


def _losses(out):
    return [r["loss"] for r in read_log(out / "train_log.jsonl")]


def test_cli_lora_run_learns_loads_and_merges(tiny_model_dir, ft_data, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from encslim.models.families.native.modeling import EncslimForConditionalGeneration

    base_dir, out, merged_dir = tiny_model_dir("A1"), tmp_path / "lora", tmp_path / "merged"
    code, stdout, stderr = _cli(capsys, "finetune", base_dir, "--data", ft_data, "--out", out, "--lora-r", 8,
                                "--max-steps", 20)
    assert code == 0, stderr
    assert "trained 20 steps: 160 samples seen of 24 in the data" in stdout and "mean of the first/last 5" in stdout
    losses = _losses(out)
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # the loss decreases
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["features_cached"] and summary["parts"]["modules_to_save"] == ["fusion"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not work_dir(out).exists()  # checkpoints removed after success
    manifest = read_manifest(out)
    assert manifest["stage"] == "finetune" and manifest["source"]["path"] == str(base_dir.resolve())
    assert manifest["kept_slots"] == ["clip", "siglip", "dinov2"] and "adapter_model.safetensors" in manifest["files"]

    batch = _batch(base_dir)
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()  # transformers loads base + adapter
    reference = PeftModel.from_pretrained(EncslimForConditionalGeneration.from_pretrained(base_dir), out).eval()
    base = EncslimForConditionalGeneration.from_pretrained(base_dir).eval()
    with torch.no_grad():
        adapted, expected, plain = loaded(**batch).logits, reference(**batch).logits, base(**batch).logits
    assert torch.allclose(adapted, expected, atol=1e-6)
    assert (adapted - plain).abs().max() > 1e-3  # training changed the model
    adapter = load_file(out / "adapter_model.safetensors")
    assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)

    code, stdout, stderr = _cli(capsys, "finetune", "merge", out, "--out", merged_dir)
    assert code == 0, stderr
    merged = EncslimForConditionalGeneration.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        assert (merged(**batch).logits - expected).abs().max() < 1e-5
    assert not (merged_dir / "adapter_config.json").exists()
    assert read_manifest(merged_dir)["verification"]["max_abs_logit_diff"] < 1e-5
    merged_state, base_state = merged.state_dict(), base.state_dict()
    assert {k: v.shape for k, v in merged_state.items()} == {k: v.shape for k, v in base_state.items()}
    assert (merged_dir / "processor_config.json").is_file() and (merged_dir / "tokenizer.json").is_file()


class Interrupt(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_seeded_runs_repeat_resume_continues_and_cache_matches_recompute(tiny_model_dir, ft_data, tmp_path):
    model = tiny_model_dir("A1")
    options = dict(max_steps=8, batch_size=4, save_steps=4, encoder_dropout=0.4, seed=1, lr=1e-3, progress=False)
    first = finetune(model, ft_data, tmp_path / "a", **options)
    _ = finetune(model, ft_data, tmp_path / "b", **options)
    curve = _losses(tmp_path / "a")
    assert len(curve) == 8 and curve == _losses(tmp_path / "b")  # a fixed seed repeats the loss curve exactly
    assert first["features_cached"]

    other = finetune(model, ft_data, tmp_path / "seed2", **dict(options, seed=2))
    assert _losses(tmp_path / "seed2") != curve and other["loss_last"] != first["loss_last"]

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(model, ft_data, out, callbacks=[Interrupt(6)], **options)
    assert (work_dir(out) / "checkpoints" / "checkpoint-4").is_dir() and not out.exists()
    with pytest.raises(ConfigError, match="holds checkpoints of an interrupted run; pass --resume"):
        finetune(model, ft_data, out, **options)
    with pytest.raises(ConfigError, match=r"different options \(lr\)"):
        finetune(model, ft_data, out, resume=True, **dict(options, lr=5e-4))
    finetune(model, ft_data, out, resume=True, **options)
    resumed = _losses(out)
    assert len(resumed) == 8 and resumed == pytest.approx(curve, abs=1e-5)  # steps 5-8 continue the same curve

    recomputed = finetune(model, ft_data, tmp_path / "nocache", cache_features=False, **options)
    assert not recomputed["features_cached"]
    assert _losses(tmp_path / "nocache") == pytest.approx(curve, abs=1e-4)


def test_full_finetuning_with_trained_encoders_and_batch_dropout(tiny_model_dir, ft_data, tmp_path):
    from encslim.models.families.native.modeling import EncslimForConditionalGeneration

    model_dir = tiny_model_dir("B")
    out = tmp_path / "full"
    summary = finetune(model_dir, ft_data, out, full=True, train_encoders="full", max_steps=3, batch_size=4,
                       encoder_dropout=0.5, progress=False)
    assert not summary["features_cached"] and summary["steps"] == 3
    base = EncslimForConditionalGeneration.from_pretrained(model_dir).state_dict()
    tuned = EncslimForConditionalGeneration.from_pretrained(out).state_dict()
    assert tuned.keys() == base.keys()
    for prefix in ("vision_towers.", "fusion.", "language_model."):
        assert any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith(prefix)), prefix

    out = tmp_path / "full_frozen"
    finetune(model_dir, ft_data, out, full=True, max_steps=2, batch_size=4, progress=False)
    tuned = EncslimForConditionalGeneration.from_pretrained(out).state_dict()
    assert all(torch.equal(tuned[k], base[k]) for k in base if k.startswith("vision_towers."))


def test_llava_conversation_json_with_raw_prompts(tiny_model_dir, tmp_path, jsonl_writer):
    rows = [json.loads(line) for line in jsonl_writer(tmp_path, n=6).read_text().splitlines()]
    llava = [{"id": r["id"], "image": r["image"], "conversations": [
        {"from": "human", "value": "<image>\n" + r["question"]}, {"from": "gpt", "value": r["answer"]}]} for r in rows]
    data = tmp_path / "llava.json"
    data.write_text(json.dumps(llava))
    summary = finetune(tiny_model_dir("C"), data, tmp_path / "out", max_steps=2, batch_size=3, prompt_format="raw",
                       progress=False)
    assert summary["samples"] == 6 and summary["steps"] == 2


def test_bad_input_fails_in_one_line_before_training(tiny_model_dir, ft_data, tmp_path, capsys, jsonl_writer):
    model = tiny_model_dir("A1")
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text('{"zero_optimization": {"stage": 2}, "train_batch_size": "auto",}')
    no_answers = jsonl_writer(tmp_path / "noans", n=3, answers=False)
    cases = [
        (["--lora-targets", "q_proj,qkv"], "LoRA target(s) qkv match no linear layer of the language model"),
        (["--deepspeed", bad_ds], "is not valid JSON"),
        (["--resume"], "nothing to resume"),
        (["--full", "--merge"], "--merge folds a LoRA adapter"),
    ]
    for extra, phrase in cases:
        out = tmp_path / "never"
        code, _, stderr = _cli(capsys, "finetune", model, "--data", ft_data, "--out", out, *extra)
        assert code == 2 and phrase in _error_line(stderr), stderr
        assert not out.exists() and not work_dir(out).exists()
    code, _, stderr = _cli(capsys, "finetune", model, "--data", no_answers, "--out", tmp_path / "never")
    assert code == 2 and "no answer" in _error_line(stderr)
    code, _, stderr = _cli(capsys, "finetune", "merge", model, "--out", tmp_path / "never")
    assert code == 2 and "not a LoRA adapter folder" in _error_line(stderr)
