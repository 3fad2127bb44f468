"""Serving tests run in the vLLM venv (.ci/vllm_env.sh; .ci/run runs them there after the main suite).

The main suite's environment has no vLLM: there this folder's tests are not collected at all (they
would import vllm). Run them with ``.venv-vllm/bin/python -m pytest -p no:cacheprovider tests/serving``.
"""

import importlib.util
import os

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # else vLLM reserves most of the RAM for its cache
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

# vLLM's CPU attention needs a head size of at least 32: the tiny LM gets 4 heads of 32 channels
SERVING_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 32}


def write_tiny_native(out, encoders=("clip",), fusion="A1", seed=0):
    """A tiny random native model (``fusion``, one slot per name in ``encoders``, LLaMA with head size 32) in
    ``out``: the export tests' builder with :data:`SERVING_TEXT`."""
    from ..export.conftest import write_native

    return write_native(out, fusion, tuple(encoders), seed, text=SERVING_TEXT)


def write_tiny_imof(out, seed=0):
    """A tiny random I-MoF (CLIP + DINOv2 towers, 16 tokens each, LLaMA with head size 32) in ``out``, laid out
    as ``encslim create-tiny --family imof`` writes it (config ``ImofLlamaForCausalLM``, ``imof_llama``)."""
    import torch

    from encslim.models.families.imof.configuration import ImofConfig
    from encslim.models.families.imof.modeling import ImofLlamaForCausalLM, register_auto_classes
    from encslim.models.families.imof.processing import ImofProcessor
    from encslim.models.families.imof.tiny import tiny_imof_config
    from encslim.models.tokenizer import build_tokenizer

    register_auto_classes()
    tokenizer = build_tokenizer()
    config = ImofConfig(**{**tiny_imof_config(tokenizer).to_dict(), **SERVING_TEXT})
    torch.manual_seed(seed)
    model = ImofLlamaForCausalLM(config).eval()
    with torch.no_grad():  # each tower visibly changes the output (as create-tiny's model)
        for tower in config.imof_towers:
            for param in model.model.tower(tower).parameters():
                param.add_(torch.randn_like(param) * 0.05)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    ImofProcessor.from_config(tokenizer, config, template="vicuna_v1").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def non_square_png(tmp_path_factory):
    """A seeded random 45x30 RGB PNG (non-square: the resize to the tower's square size matters)."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "probe.png"
    pixels = np.random.default_rng(3).integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
