"""``--format onnx``: both graphs validate against PyTorch; onnxruntime greedy tokens equal PyTorch's."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from encslim.errors import ConfigError

QUESTIONS = ["What is in the image?", "How many objects are there?", "What number is printed on the red square?"]


def _export(src, out):
    from encslim.export import export_onnx

    return export_onnx(src, out)


@pytest.fixture(scope="module")
def onnx_three(tiny_model_dir, tmp_path_factory):
    src = tiny_model_dir(fusion="A1", encoders=("clip", "siglip", "dinov2"))
    out = tmp_path_factory.mktemp("onnx") / "A1-3"
    return src, out, _export(src, out)


def _torch_greedy(src, images, questions, max_new_tokens, **generate_kwargs):
    from encslim.models.loading import load_model

    model, processor, _ = load_model(src)
    batch = processor(text=[processor.build_prompt(q) for q in questions], images=images)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    return batch, out[:, batch["input_ids"].shape[1]:].tolist()


def test_both_graphs_validate_every_output(onnx_three):
    _, out, manifest = onnx_three
    records = manifest["verification"]["export"]
    config = json.loads((out / "onnx_config.json").read_text())
    layers = config["num_layers"]
    expected = {("vision", "image_embeds"), ("embed_tokens", "inputs_embeds")}
    for step in ("prefill", "decode"):
        expected |= {(f"decoder ({step})", name) for name in ["logits", *config["decoder_past_inputs"]]
                     if name == "logits"}
        expected |= {(f"decoder ({step})", f"present.{i}.{kv}") for i in range(layers) for kv in ("key", "value")}
    assert {(r["graph"], r["output"]) for r in records} == expected
    assert all(r["matched"] and r["max_abs_diff"] <= r["atol"] == 1e-4 for r in records)
    assert config["validation"] == records
    assert [s["input"] for s in config["slots"]] == ["pixel_values_clip", "pixel_values_siglip", "pixel_values_dinov2"]
    card = (out / "README.md").read_text()
    assert "| decoder (decode): present.1.value |" in card and "ort_generate" in card


def test_graph_axes_are_dynamic(onnx_three):
    import onnx

    _, out, _ = onnx_three
    vision = onnx.load(str(out / "vision.onnx"))
    for tensor in vision.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    decoder = onnx.load(str(out / "decoder.onnx"))
    inputs = {t.name: t.type.tensor_type.shape.dim for t in decoder.graph.input}
    assert [d.dim_param != "" for d in inputs["inputs_embeds"]] == [True, True, False]
    assert [d.dim_param != "" for d in inputs["past_key_values.0.key"]] == [True, False, True, False]
    outputs = {t.name: t.type.tensor_type.shape.dim for t in decoder.graph.output}
    assert [d.dim_param != "" for d in outputs["present.1.value"]] == [True, False, True, False]


def test_vision_graph_any_batch(onnx_three):
    from encslim.export.ort_generate import OrtVlm
    from encslim.models.loading import load_model

    src, out, _ = onnx_three
    vlm = OrtVlm(out, threads=1)
    model, _, _ = load_model(src)
    from encslim.export.common import probe_images

    for count in (1, 3):
        pixels = vlm.pixel_values(probe_images(count, seed=count))
        got = vlm.sessions["vision"].run(None, pixels)[0]
        with torch.no_grad():
            expected = model.fuse(model.encode({k[len("pixel_values_"):]: torch.from_numpy(v)
                                                for k, v in pixels.items()}))
        assert got.shape == (count, 16, 64)
        assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_greedy_tokens_equal_pytorch(onnx_three):
    from encslim.export.common import probe_images
    from encslim.export.ort_generate import OrtVlm

    src, out, _ = onnx_three
    vlm = OrtVlm(out, threads=1)
    images = probe_images(3, seed=5)
    batch, expected = _torch_greedy(src, images, QUESTIONS, 10)
    ids, mask = vlm.tokenize([vlm.build_prompt(q) for q in QUESTIONS])
    assert np.array_equal(ids, batch["input_ids"].numpy()) and np.array_equal(mask, batch["attention_mask"].numpy())
    assert np.array_equal(vlm.pixel_values(images)["pixel_values_clip"], batch["pixel_values_clip"].numpy())
    assert vlm.generate(images, QUESTIONS, max_new_tokens=10) == expected
    for i in range(2):  # one prompt at a time (no padding) as well
        assert vlm.generate(images[i:i + 1], QUESTIONS[i:i + 1], max_new_tokens=10) == \
            _torch_greedy(src, images[i:i + 1], QUESTIONS[i:i + 1], 10)[1]


def test_rows_stop_at_end_of_sequence_like_transformers(onnx_three):
    from encslim.export.common import probe_images
    from encslim.export.ort_generate import OrtVlm

    src, out, _ = onnx_three
    images = probe_images(3, seed=5)
    _, free = _torch_greedy(src, images, QUESTIONS, 8)
    stop = free[0][2]  # make row 0's third token the end-of-sequence token
    vlm = OrtVlm(out, threads=1)
    vlm.config["eos_token_id"] = [stop]
    pad = vlm.config["pad_token_id"]
    _, expected = _torch_greedy(src, images, QUESTIONS, 8, eos_token_id=stop, pad_token_id=pad)
    got = vlm.generate(images, QUESTIONS, max_new_tokens=8)
    assert got == expected and got[0][3:] == [pad] * (len(got[0]) - 3)


def test_ort_generate_command_without_torch(onnx_three, tmp_path):
    from encslim.export.common import probe_images

    src, out, _ = onnx_three
    image = tmp_path / "image.png"
    probe_images(1, seed=11)[0].save(image)
    code = ("import sys\n"
            "sys.modules['torch'] = None\nsys.modules['transformers'] = None  # importing them now fails\n"
            "from encslim.export.ort_generate import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, str(out), "--image", str(image), "--prompt", QUESTIONS[0],
                             "--prompt", QUESTIONS[1], "--max-new-tokens", "6", "--json", "--threads", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    from PIL import Image

    _, expected = _torch_greedy(src, [Image.open(image)] * 2, QUESTIONS[:2], 6)
    assert printed["tokens"] == expected and len(printed["texts"]) == 2


def test_ort_generate_bad_folder_is_one_line(tmp_path, capsys):
    from encslim.export.ort_generate import main

    assert main([str(tmp_path), "--image", "x.png", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path} holds no onnx_config.json")


def test_non_native_refused(tiny_hybrid_dir, tmp_path):
    with pytest.raises(ConfigError, match="--format onnx needs a native encslim model"):
        _export(tiny_hybrid_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fusion,encoders", [("B", ("clip", "sam")), ("C", ("siglip",))], ids=["B-2enc", "C-1enc"])
def test_other_variants_round_trip(tiny_model_dir, tmp_path, fusion, encoders):
    from encslim.export.common import probe_images
    from encslim.export.ort_generate import OrtVlm

    src = tiny_model_dir(fusion=fusion, encoders=encoders)
    manifest = _export(src, tmp_path / "onnx")
    assert all(r["matched"] for r in manifest["verification"]["export"])
    images = probe_images(2, seed=3)
    expected = _torch_greedy(src, images, QUESTIONS[:2], 8)[1]
    assert OrtVlm(tmp_path / "onnx", threads=1).generate(images, QUESTIONS[:2], max_new_tokens=8) == expected


# --------------------------------------------------------------- Eagle's front end at its real 1024 px input
REAL_SIZES = {"clip-448": {"image_size": 336, "input_image_size": 336},  # 1024 -> 336 resize, patch 14
              "convnext-1024": {"input_image_size": 1024},
              "sam-1024": {"image_size": 1024, "window_size": 8},
              "det-1024": {"input_image_size": 1024, "window_size": 8, "pretrain_img_size": 224},
              "pix2struct-1024": {"image_size": 1024, "max_patches": 2048, "seq_len": 4096}}  # 45x45 patches


@pytest.fixture(scope="module")
def eagle_1024(tmp_path_factory):
    """A random Eagle-X5 at the real input resolution (1024 px; CLIP at 336) with tiny tower widths and depths."""
    from encslim.models.families.eagle.modeling import EagleVisionLlamaForCausalLM
    from encslim.models.families.eagle.processing import EagleProcessor
    from encslim.models.families.eagle.tiny import X5, tiny_eagle_config
    from encslim.models.families.eagle.towers import tiny_specs
    from encslim.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = tiny_eagle_config(X5, tokenizer)
    config.eagle_tower_specs = {t: {**tiny_specs()[t], **REAL_SIZES[t]} for t in X5}
    config.eagle_input_image_size = 1024
    torch.manual_seed(0)
    model = EagleVisionLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.model.vision_tower.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    src = tmp_path_factory.mktemp("eagle1024") / "model"
    model.save_pretrained(str(src))
    EagleProcessor.from_config(tokenizer, config).save_pretrained(src)
    return src


@pytest.mark.slow  # about 60 s wall (29 s CPU) on 2 shared cores: the towers run on 1024 px and 2048 patches
def test_eagle_front_end_at_1024_px_has_no_pixel_resize_and_matches(eagle_1024, tmp_path):
    """The graph takes each tower's input at its own size (the processor resizes), holds no Resize of pixels, and
    matches the model's own path (its resizes inside) within 1e-4 at the real 1024 px; the peak RSS is recorded."""
    import onnx

    from encslim.models.loading import load_model

    out = tmp_path / "onnx"
    manifest = _export(eagle_1024, out)
    config = json.loads((out / "onnx_config.json").read_text())
    recipes = {r["tower"]: r for r in config["vision"]["tower_inputs"]}
    assert recipes["clip-448"]["resize_to"] == 336 and recipes["clip-448"]["shape"] == [3, 336, 336]
    assert recipes["pix2struct-1024"]["shape"] == [2048, 770] and recipes["pix2struct-1024"]["grid"] == [45, 45]
    assert all(recipes[t]["resize_to"] is None for t in ("convnext-1024", "sam-1024", "det-1024"))
    saved = json.loads((out / "processor_config.json").read_text())
    assert saved["tower_inputs"] == config["vision"]["tower_inputs"]
    records = manifest["verification"]["export"]
    assert len(records) == 2 and all(r["matched"] and r["max_abs_diff"] <= r["atol"] == 1e-4 for r in records)
    memory = manifest["export"]["memory"]
    assert 0 < memory["peak_rss_mib"] <= memory["process_max_rss_mib"] + 1
    graph = onnx.load(str(out / "vision.onnx"))
    inputs = [i.name for i in graph.graph.input]
    assert inputs == config["inputs"] == [recipes[t]["input"] for t in recipes]
    resized = {n.input[0] for n in graph.graph.node if n.op_type == "Resize"}
    assert not resized & set(inputs)  # feature-grid resizes only, never a graph input
    _, processor, _ = load_model(str(eagle_1024))
    assert [r["input"] for r in processor.tower_recipes] == inputs
