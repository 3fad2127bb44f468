"""vLLM serves I-MoF folders (encslim's plugin), full and pruned: greedy tokens equal encslim's forward.

A tiny I-MoF (CLIP + DINOv2 in tsb0601/MMVP's key layout, 16 tokens each, interleaved; LLaMA with head
size 32) is served as written (both towers: no stock class interleaves two towers) and pruned to each
single tower (DINOv2 dropped; CLIP dropped), through ``ImofLlamaForCausalLM``
(models/families/imof/serving.py: encslim's towers and projectors, vLLM's Llama), fp32, the offline
engine; the three folders' engines run one after another in one process (vLLM imported once). Every
folder's ``config.json`` names that architecture, so ``vllm serve FOLDER`` needs no override.
Reference: encslim's transformers forward (``ImofLlamaForCausalLM.forward`` with ``pixel_values``),
greedy, on a non-square image. Checked: prompt token ids (MMVP's ``-200`` image positions are token
id 0 in vLLM, as many as the kept towers give), greedy tokens, prompt and generated logprobs within 1e-4.
"""

import json

import pytest

from .conftest import write_tiny_imof
from .test_vllm_llava import QUESTION, STEPS, assert_same_run, run_offline_in_one_process

ARCHITECTURE = "ImofLlamaForCausalLM"
TOWER_TOKENS = 16  # 56 px crop, 14 px patches: 4x4 per tower


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{kept towers: folder}``: the full tiny I-MoF and its two single-tower prunes."""
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("imof")
    full = write_tiny_imof(root / "full")
    prune(full, ["dinov2"], root / "clip")
    prune(full, ["clip"], root / "dinov2")
    return {("clip", "dinov2"): full, ("clip",): root / "clip", ("dinov2",): root / "dinov2"}


def imof_greedy(folder, prompt, image_path, steps):
    """Token ids (image positions as 0) and per-token logprobs of encslim's greedy continuation: the model's
    transformers forward on ``input_ids`` (``-200`` placeholders expanded) and ``pixel_values``."""
    import torch
    from PIL import Image

    from encslim.models.loading import load_model

    model, processor, _ = load_model(folder)
    pixels = processor.pixel_values([Image.open(image_path).convert("RGB")])
    ids = torch.tensor([processor.prompt_ids(prompt, processor.num_image_tokens())])
    n = ids.shape[1]
    with torch.no_grad():
        while True:
            logits = model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)).logits
            if ids.shape[1] == n + steps:
                break
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    logprobs = torch.log_softmax(logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None].clamp(min=0))[:, 0].tolist()
    plain = ids[0].clamp(min=0).tolist()  # MMVP's -200 image positions hold token id 0 in vLLM
    return {"prompt_token_ids": plain[:n], "prompt_logprobs": [None] + logprobs[:n - 1], "token_ids": plain[n:],
            "logprobs": logprobs[n - 1:], "image_positions": int((ids[0, :n] < 0).sum())}


def test_every_imof_folder_is_served_as_written(folders):
    from encslim.models.families.imof.configuration import PRUNED_TOWER_PREFIX
    from encslim.models.vllm_plugin import serve_command, serving_models

    assert serving_models()[ARCHITECTURE] == f"encslim.models.families.imof.serving:{ARCHITECTURE}"
    for kept, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert (config["architectures"], config["model_type"], config["imof_towers"]) == \
            ([ARCHITECTURE], "imof_llama", list(kept))
        assert serve_command(folder) == f"vllm serve {folder}"  # no --hf-overrides
        # a pruned folder still names a tower MMVP's build_vision_tower refuses ("Unknown vision tower")
        assert config["mm_vision_tower"].startswith(PRUNED_TOWER_PREFIX) == (len(kept) == 1)


def test_an_original_mmvp_folder_has_no_serve_command(folders, tmp_path):
    """MMVP's own config says ``llava``: vLLM reads it as stock LLaVA's, so no override makes it I-MoF."""
    from encslim.models.registry import detect_family
    from encslim.models.vllm_plugin import serve_command

    config = json.loads((folders[("clip", "dinov2")] / "config.json").read_text())
    config.update(model_type="llava", architectures=["LlavaLlamaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert detect_family(config)[0].name == "imof"
    assert serve_command(tmp_path) is None


def test_checkpoint_keys_map_to_the_vllm_modules():
    from encslim.models.families.imof.serving import checkpoint_to_vllm

    assert checkpoint_to_vllm("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight") == \
        "vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert checkpoint_to_vllm("model.dino_tower.vision_tower.blocks.0.ls1.gamma") == \
        "dino_tower.vision_tower.blocks.0.ls1.gamma"
    assert checkpoint_to_vllm("model.mm_projector.2.weight") == "mm_projector.2.weight"
    assert checkpoint_to_vllm("model.dino_mm_projector.0.bias") == "dino_mm_projector.0.bias"
    assert checkpoint_to_vllm("model.layers.1.self_attn.q_proj.weight") == \
        "language_model.model.layers.1.self_attn.q_proj.weight"
    assert checkpoint_to_vllm("lm_head.weight") == "language_model.lm_head.weight"
    # the DINO tower's CLIP copy (never run by the original) is not loaded
    assert checkpoint_to_vllm("model.dino_tower.clip_vision_tower.vision_model.post_layernorm.weight") is None


@pytest.fixture(scope="module")
def served(folders, non_square_png, tmp_path_factory):
    """``{kept towers: (vLLM's run, encslim's run)}`` of each folder on the non-square image."""
    from encslim.models.loading import load_model

    runs, expected = [], {}
    for kept, folder in folders.items():
        prompt = load_model(folder)[1].build_prompt(QUESTION)
        expected[kept] = imof_greedy(folder, prompt, non_square_png, STEPS)
        runs.append((folder, {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS,
                              "mm_processor_kwargs": {}}))
    got = run_offline_in_one_process(runs, tmp_path_factory.mktemp("imof-vllm"))
    return {kept: (run, expected[kept]) for kept, run in zip(folders, got)}


@pytest.mark.slow
@pytest.mark.parametrize("kept", [("clip", "dinov2"), ("clip",), ("dinov2",)], ids="+".join)
def test_vllm_offline_equals_encslim(served, kept):
    got, expected = served[kept]
    assert expected["image_positions"] == TOWER_TOKENS * len(kept)
    assert_same_run(got, expected)
