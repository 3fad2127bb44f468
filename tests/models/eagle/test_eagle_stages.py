"""The tiny Eagle X5 through every stage's CLI: rank (CUR/IG on a multiple-choice TSV), eval (the same
accuracies), finetune (LoRA on the LLM + the projector, towers untouched), bench (full vs pruned),
export (hf round trip, model card notes, ONNX vision front end, remote-code refused), streaming prune over shards (== unsharded
prune) and the ``mean`` mask (== its constant folded into ``mm_projector.0.bias``)."""

import contextlib
import copy
import io
import json
import shutil

import pytest
import torch
from safetensors import safe_open

import encslim
from encslim.cli import main
from encslim.models.families.eagle.tiny import X5

from ...conftest import make_image, png_base64, run_main, write_jsonl, write_tsv

TOWER_PREFIX = "model.vision_tower.vision_towers."
MC_HEADER = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
CATEGORIES = ["General", "OCR & Chart"]
N_ROWS = 24


def _cli(*args):
    """``encslim ARGS`` in this process, for module fixtures (no capsys): ``(code, stdout + stderr)``."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue()


def _tensors(folder):
    """Every tensor of a folder's safetensors files (one file or shards): ``{key: tensor}``."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                assert key not in out, f"{key} in two shards"
                out[key] = handle.get_tensor(key)
    return out


def _probe(adapter, processor):
    images = [make_image(7, 40), make_image(8, 52)]
    prompts = [adapter.build_prompt(processor, q) for q in ("What is shown?", "Which colour is on the left?")]
    return adapter.prepare_batch(processor, images, prompts)


def _logits(folder):
    model, processor, adapter = encslim.load_model(str(folder))
    batch = _probe(adapter, processor)
    with torch.no_grad():
        return adapter.next_token_logits(model, adapter.encode(model, batch), batch)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def x5_dir(tiny_eagle_dir):
    return tiny_eagle_dir(X5)


@pytest.fixture(scope="module")
def mc_tsv(tmp_path_factory):
    """24 four-option questions over two categories, answers spread over A-D, base64 PNG images."""
    rows = [[i, png_base64(make_image(100 + i)), f"Which option fits picture {i}?", "cat", "dog", "bird", "fish",
             "ABCD"[(7 * i) % 4], CATEGORIES[i % 2]] for i in range(N_ROWS)]
    return write_tsv(tmp_path_factory.mktemp("mc") / "MC_TINY.tsv", MC_HEADER, rows)


@pytest.fixture(scope="module")
def ranked(x5_dir, mc_tsv, tmp_path_factory):
    """``encslim rank`` on the X5 (single-slot masks, removal): ``(exit code, output, folder)``."""
    out = tmp_path_factory.mktemp("rank") / "rank"
    code, text = _cli("rank", x5_dir, "--data", mc_tsv, "--out", out, "--bootstrap", 100, "--seed", 0)
    return code, text, out


@pytest.fixture(scope="module")
def pruned(x5_dir, tmp_path_factory):
    """Factory: ``pruned(tower)`` -> the X5 folder with ``tower`` removed by ``encslim prune`` (cached)."""
    cache = {}

    def make(tower):
        if tower not in cache:
            out = tmp_path_factory.mktemp("pruned") / f"no-{tower}"
            code, text = _cli("prune", x5_dir, "--drop", tower, "--out", out, "--no-verify")
            assert code == 0, text
            cache[tower] = out
        return cache[tower]

    return make


# ------------------------------------------------------------------------------------------ 1. rank
def test_rank_cur_ig_on_multiple_choice_tsv(ranked):
    code, text, out = ranked
    assert code == 0, text
    md = (out / "ranking.md").read_text()
    assert md.startswith("# Encoder ranking") and f"| full | {'+'.join(X5)} |" in md
    data = json.loads((out / "ranking.json").read_text())
    assert data["slots"] == list(X5) and data["mask_mode"] == "removal"
    assert sorted(data["categories"]) == sorted(CATEGORIES)
    assert data["n_samples"] == {"overall": N_ROWS, "General": N_ROWS // 2, "OCR & Chart": N_ROWS // 2}
    full = data["accuracy"]["full"]
    # a random model scores above zero overall and per category, so every CUR below is defined
    assert full["overall"] > 0 and all(full[c] > 0 for c in CATEGORIES), full
    rows = {tuple(r["masked"]): r for r in data["subsets"]}
    assert rows[()]["accuracy"] == full
    assert set(data["cur"]) == set(X5)
    for slot in X5:
        masked_acc = rows[(slot,)]["accuracy"]
        assert sorted(r for r in rows[(slot,)]["kept"]) == sorted(s for s in X5 if s != slot)
        for category in ["overall", *CATEGORIES]:
            cell = data["cur"][slot][category]
            assert isinstance(cell["value"], float), (slot, category, cell)
            # the cell's own accuracies are the ones reported elsewhere in ranking.json
            assert cell["acc_full"] == full[category] and cell["acc_masked"] == masked_acc[category]
            expected = (full[category] - masked_acc[category]) / full[category]
            assert cell["value"] == pytest.approx(expected, abs=1e-12), (slot, category)
            assert cell["ci"][0] <= cell["value"] <= cell["ci"][1]
    values = {c: [data["cur"][s][c]["value"] for s in X5] for c in ["overall", *CATEGORIES]}
    assert len(set(values["overall"])) > 1  # the towers are told apart
    for category, cur in values.items():
        assert isinstance(data["ig"][category], float)
        assert data["ig"][category] == pytest.approx(max(cur) - min(cur), abs=1e-12)


# ------------------------------------------------------------------------------------------ 2. eval
def test_eval_accuracies_equal_rank(ranked, x5_dir, mc_tsv, pruned, tmp_path, capsys):
    code, text, rank_out = ranked
    assert code == 0, text
    data = json.loads((rank_out / "ranking.json").read_text())
    rank_acc = {tuple(r["masked"]): r["accuracy"] for r in data["subsets"]}

    out = tmp_path / "masked"
    code, stdout, stderr = run_main(capsys, "eval", x5_dir, "--data", mc_tsv, "--mask", "det-1024", "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == N_ROWS and report["mask_mode"] == "removal"
    results = {tuple(r["masked"]): r["accuracy"] for r in report["results"]}
    assert list(results) == [(), ("det-1024",)]
    assert results[()] == rank_acc[()]
    assert results[("det-1024",)] == rank_acc[("det-1024",)]
    assert results[("det-1024",)] != results[()]  # masking det-1024 changes answers, so the check has teeth

    out = tmp_path / "full"
    code, stdout, stderr = run_main(capsys, "eval", x5_dir, "--data", mc_tsv, "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "eval.json").read_text())
    assert [r["masked"] for r in report["results"]] == [[]]
    assert report["results"][0]["accuracy"] == rank_acc[()]

    # the removal mask is what prune ships: the pruned folder scores as rank's masked row
    out = tmp_path / "pruned"
    code, stdout, stderr = run_main(capsys, "eval", pruned("det-1024"), "--data", mc_tsv, "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["slots"] == [t for t in X5 if t != "det-1024"]
    assert report["results"][0]["accuracy"] == rank_acc[("det-1024",)]


# -------------------------------------------------------------------------------------- 3. finetune
def test_finetune_lora_trains_llm_and_projector_only(x5_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    (tmp_path / "images").mkdir()
    items = []
    for i in range(6):
        make_image(200 + i, 48).save(tmp_path / "images" / f"{i}.png")
        items.append({"id": f"t{i}", "image": f"images/{i}.png", "question": "What colour is the picture?",
                      "answer": ["red", "blue", "green"][i % 3], "category": "General"})
    data = write_jsonl(tmp_path / "train.jsonl", items)
    lora = tmp_path / "lora"
    code, stdout, stderr = run_main(capsys, "finetune", x5_dir, "--data", data, "--out", lora, "--max-steps", 2,
                                    "--batch-size", 2, "--seed", 0)
    assert code == 0, stdout + stderr
    summary = json.loads((lora / "finetune.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["train_encoders"] == "none"
    assert summary["parts"]["modules_to_save"] == ["model.mm_projector"]
    config = json.loads((lora / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.mm_projector"]
    assert sorted(config["target_modules"]) == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    saved = load_file(str(lora / "adapter_model.safetensors"))
    lora_keys = [k for k in saved if ".lora_" in k]
    assert len(lora_keys) == 8 and all(k.startswith("base_model.model.model.layers.") for k in lora_keys)
    others = sorted(k for k in saved if ".lora_" not in k)
    assert others == [f"base_model.model.model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    assert not any("vision_tower" in k for k in saved)
    assert all(saved[k].abs().max() > 0 for k in lora_keys if "lora_B" in k)  # the two steps trained them

    merged = tmp_path / "merged"
    code, stdout, stderr = run_main(capsys, "finetune", "merge", lora, "--out", merged)
    assert code == 0, stdout + stderr
    source, result = _tensors(x5_dir), _tensors(merged)
    assert sorted(result) == sorted(source)
    towers = [k for k in source if k.startswith(TOWER_PREFIX)]
    assert len(towers) > 100 and {k[len(TOWER_PREFIX):].split(".")[0] for k in towers} == {"0", "1", "2", "3", "4"}
    for key in towers:
        assert result[key].dtype == source[key].dtype and torch.equal(result[key], source[key]), key
    changed = sorted(k for k in source if not torch.equal(result[k], source[k]))
    assert "model.mm_projector.0.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed
    assert all(k.startswith(("model.mm_projector.", "model.layers.")) for k in changed), changed
    model, _, adapter = encslim.load_model(str(merged))
    assert adapter.model_type == "eagle_llama" and model.config.tower_names == list(X5)


# ----------------------------------------------------------------------------------------- 4. bench
def test_bench_full_vs_pruned(x5_dir, pruned, tmp_path, capsys):
    variant = pruned("det-1024")
    out = tmp_path / "bench"
    code, stdout, stderr = run_main(capsys, "bench", x5_dir, variant, "--out", out, "--batch-sizes", 1,
                                    "--max-new-tokens", 2, "--min-iters", 1, "--min-seconds", 0, "--warmup", 0,
                                    "--no-memory", "--device", "cpu")
    assert code == 0, stdout + stderr
    report = json.loads((out / "bench.json").read_text())
    models = {m["role"]: m for m in report["models"]}
    assert len(report["models"]) == 2 and sorted(models) == ["full", "variant"]
    full, small = models["full"], models["variant"]
    assert full["encoders_run"] == list(X5) == full["slots"]
    assert small["encoders_run"] == [t for t in X5 if t != "det-1024"] == small["slots"]
    assert small["params"]["total"] < full["params"]["total"]
    assert full["params"]["total"] - small["params"]["total"] == full["params"]["encoder:det-1024"] + 32 * 64
    assert small["flops"]["vision"] < full["flops"]["vision"]
    assert (out / "bench.md").is_file()


# ---------------------------------------------------------------------------------------- 5. export
def test_export_hf_of_pruned_eagle(pruned, tmp_path, capsys):
    source = pruned("convnext-1024")
    out = tmp_path / "hf"
    code, stdout, stderr = run_main(capsys, "export", source, "--format", "hf", "--out", out)
    assert code == 0, stdout + stderr
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["EagleVisionLlamaForCausalLM"]
    assert config["mm_vision_tower"] == "clip-448;sam-1024;det-1024;pix2struct-1024"
    card = (out / "README.md").read_text()
    assert "vLLM" in card and "speculative-decoding" in card and "EagleLlamaForCausalLM" in card
    assert "without convnext-1024 this folder does not load in NVlabs/EAGLE's own code" in card
    model, _, adapter = encslim.load_model(str(out))
    assert adapter.model_type == "eagle_llama" and "convnext-1024" not in model.config.tower_names
    exported, expected = _logits(out), _logits(source)
    assert torch.equal(exported, expected)

    # convnext-1024 kept: the card does not claim the folder fails in NVlabs/EAGLE's code
    kept = tmp_path / "hf-kept"
    code, stdout, stderr = run_main(capsys, "export", pruned("det-1024"), "--format", "hf", "--out", kept)
    assert code == 0, stdout + stderr
    card = (kept / "README.md").read_text()
    assert "speculative-decoding" in card and "NVlabs/EAGLE's own code" not in card

    code, stdout, stderr = run_main(capsys, "export", source, "--format", "remote-code", "--out", tmp_path / "rc")
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "remote-code" in lines[0], stderr
    assert not (tmp_path / "rc").exists()


def test_export_onnx_vision_front_end(pruned, tmp_path, capsys):
    """--format onnx writes the vision front end (pixels -> image embeddings); onnxruntime gives what the
    model's fusion + projector give at the image-token positions."""
    import numpy as np
    import onnxruntime as ort

    source = pruned("det-1024")
    out = tmp_path / "onnx"
    code, stdout, stderr = run_main(capsys, "export", source, "--format", "onnx", "--out", out)
    assert code == 0, stdout + stderr
    config = json.loads((out / "onnx_config.json").read_text())
    assert config["graphs"] == {"vision": "vision.onnx"} and all(r["matched"] for r in config["validation"])
    assert config["vision"]["towers"] == [t for t in X5 if t != "det-1024"]
    model, processor, adapter = encslim.load_model(str(source))
    batch = adapter.prepare_batch(processor, [make_image(7, 40), make_image(8, 52)], ["a", "b"])
    with torch.no_grad():
        embeds = adapter.embed(model, adapter.encode(model, batch), batch)
    image = batch["input_ids"] == adapter.image_token_id(model.config)
    expected = embeds[image].reshape(2, -1, model.config.hidden_size).numpy()
    session = ort.InferenceSession(str(out / "vision.onnx"), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in processor.tower_inputs(batch["pixel_values"]).items()}  # one input per tower
    assert [i.name for i in session.get_inputs()] == list(feeds) == config["inputs"]
    got = session.run(None, feeds)[0]
    assert got.shape == (2, 1024, model.config.hidden_size)
    assert np.abs(got - expected).max() <= 1e-4


# ------------------------------------------------------------------------------- 6. streaming prune
def test_streaming_prune_over_shards_equals_unsharded_prune(x5_dir, tmp_path, capsys):
    sharded = tmp_path / "sharded"
    model, _, _ = encslim.load_model(str(x5_dir))
    model.save_pretrained(str(sharded), max_shard_size="200KB")
    for path in x5_dir.iterdir():  # the source's own config, tokenizer and processor files
        if path.is_file() and not path.name.startswith("model.safetensors"):
            shutil.copy2(path, sharded / path.name)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert not (sharded / "model.safetensors").exists()
    reference = _tensors(x5_dir)
    source = _tensors(sharded)
    assert sorted(source) == sorted(reference) and all(torch.equal(source[k], reference[k]) for k in reference)

    streamed, memory = tmp_path / "streamed", tmp_path / "memory"
    code, stdout, stderr = run_main(capsys, "prune", sharded, "--drop", "sam-1024", "--out", streamed, "--streaming",
                                    "--max-shard-size", "200KB", "--json")
    assert code == 0, stdout + stderr
    result = json.loads(stdout)
    assert result["executor"] == "streaming" and result["verification"]["passed"]
    shards = sorted(sharded.glob("*.safetensors"))
    assert result["io"]["bytes_read"] == sum(p.stat().st_size for p in shards)  # one pass over the shards
    code, stdout, stderr = run_main(capsys, "prune", x5_dir, "--drop", "sam-1024", "--out", memory, "--in-memory",
                                    "--no-verify", "--json")
    assert code == 0, stdout + stderr
    assert json.loads(stdout)["executor"] == "in-memory"

    assert (streamed / "model.safetensors.index.json").is_file() and len(list(streamed.glob("*.safetensors"))) > 1
    got, want = _tensors(streamed), _tensors(memory)
    assert sorted(got) == sorted(want)
    assert not any(k.startswith(f"{TOWER_PREFIX}4.") for k in got)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert json.loads((streamed / "config.json").read_text())["mm_vision_tower"] == \
        json.loads((memory / "config.json").read_text())["mm_vision_tower"] == "clip-448;convnext-1024;det-1024;pix2struct-1024"
    model, _, _ = encslim.load_model(str(streamed))
    assert model.config.tower_names == [t for t in X5 if t != "sam-1024"]


# ------------------------------------------------------------------------------------ 7. mean mask
@pytest.fixture(scope="module")
def encoded(x5_dir):
    model, processor, adapter = encslim.load_model(str(x5_dir))
    batch = _probe(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
    return model, adapter, batch, features


@pytest.mark.parametrize("tower", X5)
def test_mean_mask_folds_into_projector_bias(encoded, tower):
    model, adapter, batch, features = encoded
    config = model.config
    mean = features[tower].mean(dim=(0, 1))  # the tower's per-channel mean over images and tokens
    assert mean.shape == (config.tower_width(tower),) and mean.abs().max() > 1e-3
    start = sum(config.tower_width(t) for t in X5[:X5.index(tower)])
    stop = start + config.tower_width(tower)
    folded = copy.deepcopy(model)
    first = folded.model.mm_projector[0]
    assert first.in_features == config.mm_hidden_size
    with torch.no_grad():
        first.bias += first.weight[:, start:stop] @ mean
        got = adapter.next_token_logits(model, features, batch, masked={tower}, mask_mode="mean",
                                        mask_values={tower: mean})
        want = adapter.next_token_logits(folded, features, batch, masked={tower}, mask_mode="zero")
        zero = adapter.next_token_logits(model, features, batch, masked={tower}, mask_mode="zero")
    assert (got - zero).abs().max() > 1e-3  # the mean differs from the zero mask, so the check has teeth
    assert (got - want).abs().max() <= 1e-5
