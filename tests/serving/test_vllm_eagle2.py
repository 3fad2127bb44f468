"""vLLM serves full and pruned Eagle2 folders (encslim's plugin): greedy tokens equal encslim's forward.

A tiny Eagle2 (SigLIP + ConvNeXt in NVlabs/Eagle's key layout, 112 px tiles of 16 ``<IMG_CONTEXT>``
tokens, dynamic tiles up to 12 plus a thumbnail, LayerNorm-first ``mlp1``; Qwen2 with head size 32) is
served as written and pruned to each single tower (the removed tower's ``mlp1`` input block stays as
constant zeros, ``encslim_removed_dims``); vLLM loads each folder through ``Eagle2ChatModel``
(models/families/eagle2/serving.py: encslim's towers and fusion, vLLM's Qwen2), fp32, one offline engine per
folder serving every request for it, the three engines one after another in one process (vLLM imported once:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; engine start-up is most of the time). The image is non-square
(45x30: a 3x2 grid, 7 tiles with the thumbnail; with ``max_tiles`` 2 a 2x1 grid, 3 tiles). Reference:
encslim's transformers forward (``Eagle2ChatModel.forward``), greedy. Checked: prompt token ids (each tile's
``<IMG_CONTEXT>`` run), greedy tokens, prompt and generated logprobs within 1e-4.

Run as ``python -m tests.serving.test_vllm_eagle2 RUNS.json OUT.json`` it is the engines' side: for each
``[folder, requests]`` of RUNS.json, one vLLM engine for the folder answers each of its requests (a subprocess).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SERVING_TEXT
from .test_vllm_llava import ENGINE_TIMEOUT, QUESTION, STEPS, assert_same_run

ARCHITECTURE = "Eagle2ChatModel"
ROOT = Path(__file__).resolve().parents[2]
TOKENS_PER_TILE = 16
MAX_MODEL_LEN = 512


def write_tiny_eagle2(out, seed=0):
    """The family's tiny Eagle2 (``tiny.py``: its config, tokenizer and seeded tower noise) with a Qwen2 of head
    size 32, written as the original's layout (safetensors, ``config.json``, tokenizer, processor config)."""
    import torch
    from safetensors.torch import save_file

    from encslim.models.families.eagle2.configuration import IMG_CONTEXT, Eagle2ChatConfig
    from encslim.models.families.eagle2.modeling import Eagle2ChatModel, register_auto_classes
    from encslim.models.families.eagle2.processing import Eagle2Processor
    from encslim.models.families.eagle2.tiny import TINY_HEAD_CLASSES, perturb, tiny_eagle2_config, tiny_tokenizer

    register_auto_classes()
    tokenizer = tiny_tokenizer()
    base = tiny_eagle2_config(tokenizer)
    config = Eagle2ChatConfig(**{**base.to_dict(), "llm_config": {**base.llm_config.to_dict(), **SERVING_TEXT}})
    config.convnext_head_classes = TINY_HEAD_CLASSES
    torch.manual_seed(seed)
    model = perturb(Eagle2ChatModel(config).eval())
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    config.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    Eagle2Processor.from_config(tokenizer, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{"full": folder, "siglip": folder without SigLIP, "convnext": folder without ConvNeXt}``."""
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("eagle2")
    out = {"full": write_tiny_eagle2(root / "full")}
    for slot in ("siglip", "convnext"):
        prune(out["full"], [slot], root / f"without-{slot}")
        out[slot] = root / f"without-{slot}"
    return out


def eagle2_greedy(folder, prompt, image_path, steps, max_tiles=None):
    """encslim's run: the folder's processor (tiles, expanded prompt), ``Eagle2ChatModel.forward`` (one full
    forward per greedy step); token ids, per-token logprobs and the image's tile count."""
    import torch
    from PIL import Image

    from encslim.models.loading import load_model

    model, processor, adapter = load_model(folder)
    adapter.configure_processor(processor, max_tiles=max_tiles)
    batch = adapter.prepare_batch(processor, [Image.open(image_path).convert("RGB")], [prompt])
    ids, n = batch["input_ids"], batch["input_ids"].shape[1]
    with torch.no_grad():
        while True:
            mask = torch.ones_like(ids)
            logits = model(input_ids=ids, pixel_values=batch["pixel_values"], attention_mask=mask).logits
            if ids.shape[1] == n + steps:
                break
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    logprobs = torch.log_softmax(logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0].tolist()
    return {"prompt_token_ids": ids[0, :n].tolist(), "prompt_logprobs": [None] + logprobs[:n - 1],
            "token_ids": ids[0, n:].tolist(), "logprobs": logprobs[n - 1:], "tiles": int(batch["num_tiles"][0]),
            "context_id": processor.image_token_id}


@pytest.fixture(scope="module")
def requests(folders, non_square_png):
    """``{folder name: [(request, encslim's run), ...]}``: the full folder with and without ``max_tiles``, each
    pruned folder once."""
    from encslim.models.loading import load_model

    asked = {}
    for name, tiles in (("full", [None, 2]), ("siglip", [None]), ("convnext", [None])):
        folder = folders[name]
        prompt = load_model(folder)[1].build_prompt(QUESTION)
        asked[name] = [({"prompt": prompt, "image": str(non_square_png),
                         "mm_processor_kwargs": {} if max_tiles is None else {"max_tiles": max_tiles}},
                        eagle2_greedy(folder, prompt, non_square_png, STEPS, max_tiles=max_tiles))
                       for max_tiles in tiles]
    return asked


@pytest.fixture(scope="module")
def answers(folders, requests, tmp_path_factory):
    """``{folder name: [vLLM's answer, ...]}`` (as ``requests``): this module as a script, one subprocess, one
    engine per folder in turn (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engine core and worker in that process)."""
    tmp_path = tmp_path_factory.mktemp("eagle2-vllm")
    runs = [[str(folders[name]), [request for request, _ in asked]] for name, asked in requests.items()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    out = tmp_path / "answers.json"
    proc = subprocess.run([sys.executable, "-m", "tests.serving.test_vllm_eagle2", str(tmp_path / "runs.json"),
                           str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=(ENGINE_TIMEOUT + 120) * len(runs),
                          env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert proc.returncode == 0, f"vLLM offline runs failed:\n{proc.stderr[-4000:]}"
    return dict(zip(requests, json.loads(out.read_text())))


def test_the_plugin_serves_eagle2_folders_as_written(folders, tmp_path):
    from encslim.export import export_hf
    from encslim.export.commands import format_summary
    from encslim.models.vllm_plugin import serve_command, serving_models

    assert serving_models()[ARCHITECTURE] == f"encslim.models.families.eagle2.serving:{ARCHITECTURE}"
    for name, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [ARCHITECTURE], name  # the original's name, kept by pruning
        assert serve_command(folder) == f"vllm serve {folder}"  # no --hf-overrides: vLLM has no model of that name
    out = tmp_path / "exported"
    manifest = export_hf(folders["siglip"], out)  # what `encslim export --format hf` prints
    assert format_summary(manifest, "hf", out).splitlines()[-1] == f"  serve with vLLM: vllm serve {out}"


def test_mm_processor_kwargs_are_max_tiles_only(folders):
    from encslim.errors import ConfigError
    from encslim.models.families.eagle2.serving import processor_for
    from encslim.models.loading import load_model

    processor = load_model(folders["full"])[1]
    assert processor_for(processor, {}) is processor
    assert processor_for(processor, {"max_tiles": 12}) is processor  # the config's value: no copy
    two = processor_for(processor, {"max_tiles": 2})
    assert (two.max_tiles, processor.max_tiles) == (2, 12)  # a copy; the folder's processor is unchanged
    with pytest.raises(ValueError, match="^Eagle2 takes mm_processor_kwargs max_tiles; got backend, size$"):
        processor_for(processor, {"size": 1, "backend": "pil"})
    with pytest.raises(ConfigError, match="max tiles 0 must be a whole number >= min_dynamic_patch"):
        processor_for(processor, {"max_tiles": 0})


@pytest.mark.parametrize("name", ["full", "siglip"])
def test_the_towers_are_the_checkpoints_less_the_unused_heads(folders, name):
    from safetensors import safe_open

    from encslim.models.families.eagle2.configuration import read_eagle2_config
    from encslim.models.families.eagle2.modeling import MultiBackboneChannelConcatenationVisionModel
    from encslim.models.families.eagle2.serving import _SKIP, tower_config

    config = read_eagle2_config(folders[name])
    with safe_open(str(folders[name] / "model.safetensors"), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("vision_model.")}
    skipped = {k for k in stored if _SKIP.search(k)}
    assert all(".vision_tower.head." in k or ".vision_tower.vision_model.head." in k for k in skipped)
    assert len(skipped) == (15 if name == "full" else 4)  # SigLIP's pooling head (11), ConvNeXt's classifier (4)
    towers = MultiBackboneChannelConcatenationVisionModel(tower_config(config, folders[name]))
    built = {f"vision_model.{k}": tuple(v.shape) for k, v in towers.state_dict().items()}
    assert built == {k: v for k, v in stored.items() if k not in skipped}


@pytest.mark.slow
def test_vllm_full_eagle2_equals_encslim_with_and_without_max_tiles(requests, answers):
    assert [request["mm_processor_kwargs"] for request, _ in requests["full"]] == [{}, {"max_tiles": 2}]
    expected = [want for _, want in requests["full"]]
    assert [e["tiles"] for e in expected] == [7, 3]  # 3x2 grid + thumbnail; 2x1 grid + thumbnail
    assert len(answers["full"]) == 2
    for got, want in zip(answers["full"], expected):
        assert got["prompt_token_ids"].count(want["context_id"]) == TOKENS_PER_TILE * want["tiles"]
        assert_same_run(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("removed", ["siglip", "convnext"])
def test_vllm_pruned_eagle2_equals_encslim(folders, removed, requests, answers):
    config = json.loads((folders[removed] / "config.json").read_text())
    assert config["encslim_removed_dims"] == {removed: 64}  # its mlp1 input block: 64 zero channels
    [(request, expected)] = requests[removed]
    assert request["mm_processor_kwargs"] == {} and expected["tiles"] == 7
    [got] = answers[removed]
    assert_same_run(got, expected)


def answer(llm, request):
    """The engine's greedy answer to one request (prompt, image path, mm_processor_kwargs) as plain lists."""
    from PIL import Image
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, logprobs=0, prompt_logprobs=0)
    image = Image.open(request["image"]).convert("RGB")
    out = llm.generate({"prompt": request["prompt"], "multi_modal_data": {"image": image},
                        "mm_processor_kwargs": request["mm_processor_kwargs"]}, params)[0]
    ids, tokens = out.prompt_token_ids, out.outputs[0].token_ids
    return {"prompt_token_ids": list(ids),
            "prompt_logprobs": [None] + [lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:])],
            "token_ids": list(tokens), "logprobs": [lp[t].logprob for t, lp in zip(tokens, out.outputs[0].logprobs)]}


def main(runs_path, out_path):
    """For each ``[folder, requests]`` of ``runs_path``, one engine for the folder answers each of its requests
    (then shuts down); the answers go into ``out_path`` (a JSON list per folder)."""
    import gc

    from vllm import LLM

    answers = []
    for folder, requests in json.loads(Path(runs_path).read_text()):
        llm = LLM(model=folder, dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0, enforce_eager=True,
                  limit_mm_per_prompt={"image": 1})
        answers.append([answer(llm, r) for r in requests])
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    Path(out_path).write_text(json.dumps(answers))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    main(*sys.argv[1:3])
