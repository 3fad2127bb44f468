"""vLLM serves folders that carry a token budget (``config.json`` ``token_budget``) as encslim computes them.

encslim's plugin reads the budget from the folder's config: the processing info counts the placeholders the
reducer leaves (native: per grid, each sequence-concat slot on its own; Eagle2: per tile), and each family's
``embed_multimodal`` passes its projected tokens through ``models.tokens.reduce_grids`` (the ``attention``
method scored with vLLM's first Llama/Qwen2 decoder layer: its merged ``qkv_proj`` sliced into queries and keys).
Tiny folders (LLaMA/Qwen2 with head size 32), fp32, a non-square image (Eagle2: 7 tiles with the thumbnail),
pruned under the budget by ``encslim prune`` (``prune(..., token_budget=, token_method=)``, verified) where a tower
goes, else given the ``config.json`` key:

- native class B (CLIP + SigLIP + DINOv2, DINOv2 pruned: two 4x4 grids) under ``pool 0.25`` (each grid pooled
  2x2 on its own: 8 tokens);
- native class A1 (the same towers, DINOv2 pruned: one fused 4x4 grid) under ``attention 0.25`` (its 4 most
  attended tokens);
- Eagle2 (4x4 tokens per tile) pruned to SigLIP under ``pool 0.25`` (4 per tile), and full under
  ``attention 0.5`` (8 per tile);
- Eagle v1 (three towers, one 32x32 grid) under ``attention 0.25`` (256 tokens);
- I-MoF (CLIP + DINOv2, a 4x4 grid each) under ``pool 0.25`` (each tower's grid pooled before the interleave).

Reference: encslim's transformers forward of the same folder, greedy. Checked: prompt token ids (the reduced
placeholder count, equal to encslim's processor's), greedy tokens, prompt and generated logprobs within 1e-4.
The engines run one after another in one subprocess (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
A folder whose budget its family cannot apply (native class B keeping CLS tokens: no grid) is refused before
any engine starts, in one line.
"""

import json

import pytest

from .conftest import SERVING_TEXT, write_tiny_imof, write_tiny_native
from .test_vllm_eagle import ARCHITECTURE as EAGLE_ARCHITECTURE
from .test_vllm_eagle import eagle_greedy, write_tiny_eagle
from .test_vllm_eagle2 import eagle2_greedy, write_tiny_eagle2
from .test_vllm_imof import imof_greedy
from .test_vllm_llava import QUESTION, STEPS, assert_same_run, native_greedy, run_offline_in_one_process

# name -> (family, fusion, budget, image tokens of one image (Eagle2: of one tile) without and with the budget)
CASES = {
    "native-pool": ("native", "B", {"method": "pool", "budget": 0.25}, 32, 8),
    "native-attention": ("native", "A1", {"method": "attention", "budget": 0.25}, 16, 4),
    "eagle2-pool": ("eagle2", None, {"method": "pool", "budget": 0.25}, 16, 4),
    "eagle2-attention": ("eagle2", None, {"method": "attention", "budget": 0.5}, 16, 8),
    "eagle-attention": ("eagle", None, {"method": "attention", "budget": 0.25}, 1024, 256),
    "imof-pool": ("imof", None, {"method": "pool", "budget": 0.25}, 32, 8),
}
WRITERS = {"eagle": write_tiny_eagle, "eagle2": write_tiny_eagle2, "imof": write_tiny_imof}
PRUNED = {"native-pool": "dinov2", "native-attention": "dinov2", "eagle2-pool": "convnext"}  # case -> tower removed
EAGLE2_TILES = 7  # the 45x30 image: a 3x2 grid and the thumbnail


def with_budget(folder, budget):
    """Write ``budget`` into the folder's ``config.json`` as ``token_budget`` (as a pruned folder carries it)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["token_budget"] = budget
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{case: folder}``: each case's tiny folder with its ``token_budget`` (pruned under it, or the key written)."""
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("budget")
    out = {}
    for name, (family, fusion, budget, _, _) in CASES.items():
        if family == "native":
            full = write_tiny_native(root / f"{name}-full", ("clip", "siglip", "dinov2"), fusion)
        else:
            full = WRITERS[family](root / f"{name}-full")
        if name in PRUNED:
            manifest = prune(full, [PRUNED[name]], root / name, token_budget=budget["budget"],
                             token_method=budget["method"])
            assert manifest["token_budget"]["method"] == budget["method"]
            assert json.loads((root / name / "config.json").read_text())["token_budget"] == budget
            out[name] = root / name
        else:
            out[name] = with_budget(full, budget)
    return out


def reference(name, folder, image):
    """The prompt, encslim's greedy run of ``folder`` (transformers forward) and its image positions' count."""
    from encslim.models.loading import load_model

    family = CASES[name][0]
    processor = load_model(folder)[1]
    prompt = processor.build_prompt(QUESTION)
    if family == "native":
        run = native_greedy(folder, prompt, image, STEPS)
        return prompt, run, run["prompt_token_ids"].count(processor.image_token_id)
    if family == "eagle2":
        run = eagle2_greedy(folder, prompt, image, STEPS)
        return prompt, run, run["prompt_token_ids"].count(run["context_id"])
    run = (eagle_greedy if family == "eagle" else imof_greedy)(folder, prompt, image, STEPS)
    return prompt, run, run["image_positions"]


@pytest.fixture(scope="module")
def runs(folders, non_square_png, tmp_path_factory):
    """``{case: (vLLM's run, encslim's run, its image positions)}``, every engine in one subprocess."""
    expected, asked = {}, []
    for name, folder in folders.items():
        prompt, run, positions = reference(name, folder, non_square_png)
        expected[name] = (run, positions)
        overrides = {"architectures": [EAGLE_ARCHITECTURE]} if CASES[name][0] == "eagle" else None
        asked.append((folder, {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS,
                               "mm_processor_kwargs": {}, "max_model_len": 512, "hf_overrides": overrides}))
    got = run_offline_in_one_process(asked, tmp_path_factory.mktemp("budget-vllm"))
    return {name: (answer, *expected[name]) for name, answer in zip(folders, got)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_vllm_under_the_folder_budget_equals_encslim(runs, name):
    got, expected, positions = runs[name]
    family, _, _, full, kept = CASES[name]
    tiles = EAGLE2_TILES if family == "eagle2" else 1
    assert positions == kept * tiles < full * tiles  # the reduced count, as encslim's processor writes it
    assert_same_run(got, expected)


def test_the_budget_reaches_both_processors(folders):
    """The folder's processor (the one vLLM's processing info uses) writes the reduced count the config asks."""
    from encslim.models.loading import load_model
    from encslim.models.tokens import TokenBudget

    for name, folder in folders.items():
        family, _, budget, _, kept = CASES[name]
        model, processor, adapter = load_model(folder)
        assert processor.token_budget == TokenBudget(**budget)
        assert adapter.image_tokens(model.config) == kept


def test_a_budget_the_family_cannot_apply_is_refused_before_an_engine_starts(tmp_path):
    from encslim.bench.vllm_engine import engine_overrides
    from encslim.errors import ConfigError
    from encslim.models.vllm_plugin import serve_command

    from ..export.conftest import write_native

    folder = write_native(tmp_path / "cls", "B", ("clip", "dinov2"), 0, text=SERVING_TEXT, cls="keep")
    assert serve_command(folder) == f"vllm serve {folder}"
    with_budget(folder, {"method": "pool", "budget": 0.25})
    assert serve_command(folder) is None
    with pytest.raises(ConfigError) as err:
        engine_overrides(folder)
    assert str(err.value) == (
        f"--engine vllm: {folder} carries token budget pool 0.25 (config.json token_budget), which it cannot apply: "
        "slot(s) clip, dinov2 keep their CLS token, so their tokens are no grid a reducer could shorten; rebuild "
        "the model with cls 'drop'; bench it with --engine eager")
    with_budget(folder, {"method": "pool", "budget": 1})  # budget 1: every token, nothing to refuse
    assert serve_command(folder) == f"vllm serve {folder}"
