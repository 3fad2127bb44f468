"""vLLM serves pruned Eagle v1 folders (encslim's plugin): greedy tokens equal encslim's forward.

A tiny Eagle (CLIP-448, SAM-1024, ConvNeXt-1024 towers in NVlabs/EAGLE's key layout; LLaMA with head
size 32; 1024 image tokens) is pruned to two towers (ConvNeXt removed), a kept set no stock class
holds, and loaded by vLLM through ``EagleVisionLlamaForCausalLM`` (models/families/eagle/serving.py:
encslim's towers and projector, vLLM's Llama), fp32, the offline engine, once (in one process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Its ``config.json``
says ``EagleLlamaForCausalLM`` as the original's does, a name vLLM gives its EAGLE speculative-decoding
draft model: the folder is served with ``--hf-overrides`` naming encslim's architecture
(:func:`encslim.models.vllm_plugin.serve_command`). Reference: encslim's transformers forward, greedy,
on a non-square image. Checked: prompt token ids (Eagle's ``-200`` image positions are token id 0 in
vLLM), greedy tokens, prompt and generated logprobs within 1e-4.
"""

import json
import shlex

import pytest

from .conftest import SERVING_TEXT
from .test_vllm_llava import QUESTION, STEPS, assert_same_run, run_offline_in_one_process

TOWERS = ("clip-448", "sam-1024", "convnext-1024")
ARCHITECTURE = "EagleVisionLlamaForCausalLM"


def write_tiny_eagle(out, seed=0):
    """A tiny random Eagle (three towers, LLaMA with head size 32) in ``out``, its config naming the
    original's architecture (``EagleLlamaForCausalLM``) as a real checkpoint's does."""
    import torch

    from encslim.models.families.eagle.configuration import EagleConfig
    from encslim.models.families.eagle.modeling import EagleVisionLlamaForCausalLM, register_auto_classes
    from encslim.models.families.eagle.processing import EagleProcessor
    from encslim.models.families.eagle.tiny import tiny_eagle_config
    from encslim.models.tokenizer import build_tokenizer

    register_auto_classes()
    tokenizer = build_tokenizer()
    config = EagleConfig(**{**tiny_eagle_config(TOWERS, tokenizer).to_dict(), **SERVING_TEXT})
    torch.manual_seed(seed)
    model = EagleVisionLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.model.vision_tower.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(out)
    EagleProcessor.from_config(tokenizer, config).save_pretrained(out)
    path = out / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architectures": ["EagleLlamaForCausalLM"]}))
    return out


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("eagle")
    prune(write_tiny_eagle(root / "full"), ["convnext-1024"], root / "pruned")
    return root / "pruned"


def eagle_greedy(folder, prompt, image_path, steps):
    """Token ids (image positions as 0) and per-token logprobs of encslim's greedy continuation."""
    import torch
    from PIL import Image

    from encslim.models.loading import load_model

    model, processor, adapter = load_model(folder)
    batch = adapter.prepare_batch(processor, [Image.open(image_path).convert("RGB")], [prompt])
    n = batch["input_ids"].shape[1]
    with torch.no_grad():
        features = adapter.encode(model, batch)
        ids = batch["input_ids"]
        while True:
            logits = adapter.decode(model, features, {**batch, "input_ids": ids,
                                                       "attention_mask": torch.ones_like(ids)}).logits
            if ids.shape[1] == n + steps:
                break
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    logprobs = torch.log_softmax(logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None].clamp(min=0))[:, 0].tolist()
    plain = ids[0].clamp(min=0).tolist()  # Eagle's -200 image positions hold token id 0 in vLLM
    return {"prompt_token_ids": plain[:n], "prompt_logprobs": [None] + logprobs[:n - 1], "token_ids": plain[n:],
            "logprobs": logprobs[n - 1:], "image_positions": int((batch["input_ids"] < 0).sum())}


def test_serve_command_renames_the_draft_model_architecture(pruned):
    from encslim.models.vllm_plugin import serve_command, serving_models

    assert serving_models()[ARCHITECTURE] == f"encslim.models.families.eagle.serving:{ARCHITECTURE}"
    assert json.loads((pruned / "config.json").read_text())["architectures"] == ["EagleLlamaForCausalLM"]
    command = shlex.split(serve_command(pruned))
    assert command == ["vllm", "serve", str(pruned), "--hf-overrides", json.dumps({"architectures": [ARCHITECTURE]})]


@pytest.mark.slow
def test_vllm_offline_two_towers_equal_encslim(pruned, non_square_png, tmp_path):
    from encslim.models.loading import load_model

    processor = load_model(pruned)[1]
    prompt = processor.build_prompt(QUESTION)
    expected = eagle_greedy(pruned, prompt, non_square_png, STEPS)
    assert expected["image_positions"] == 32 * 32
    overrides = {"architectures": [ARCHITECTURE]}
    request = {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS, "mm_processor_kwargs": {},
               "max_model_len": 2048, "hf_overrides": overrides}
    assert_same_run(run_offline_in_one_process([(pruned, request)], tmp_path)[0], expected)
