"""encslim's commands on the I-MoF folder exactly as MMVP's trainer saved it (``model/``, see README.md):
``.bin`` shards with an index and transformers 4.31's ``rotary_emb.inv_freq`` keys.

``inspect`` and ``eval`` open it; ``prune`` streams it into safetensors shards, verified, whose logits are
the ORIGINAL code's CLIP-only logits; and the pruned config is refused by MMVP's own loader.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import encslim

HERE = Path(__file__).parent
FOLDER = HERE / "model"
INV_FREQ = [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in (0, 1)]


def _cli(capsys, *args):
    from encslim.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_reads_the_bin_shards(capsys):
    code, out, err = _cli(capsys, "inspect", FOLDER, "--json")
    assert code == 0, out + err
    info = json.loads(out)
    assert info["model_type"] == "imof_llama" and [s["name"] for s in info["slots"]] == ["clip", "dinov2"]
    assert info["fusion"]["image_tokens"] == 1152
    assert info["params_match"] and info["params_in_headers"] == info["params_total"]  # inv_freq not counted


def test_inv_freq_keys_are_tolerated_and_named(caplog):
    with caplog.at_level(logging.INFO, logger="encslim.models.layout"):
        model, _, _ = encslim.load_model(str(FOLDER))
    assert not any(k.endswith("inv_freq") for k in model.state_dict())
    named = [r.getMessage() for r in caplog.records if "tolerated" in r.getMessage()]
    assert len(named) == 1 and "2 checkpoint key(s) tolerated" in named[0]
    assert all(key in named[0] for key in INV_FREQ)


def test_eval_runs_on_the_bin_folder(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    row = {"id": "q0", "image": "a.png", "category": "General", "question": "What colour?", "answer": "red"}
    (tmp_path / "bench.jsonl").write_text(json.dumps(row) + "\n")
    code, out, err = _cli(capsys, "eval", FOLDER, "--data", tmp_path / "bench.jsonl", "--max-new-tokens", "2",
                          "--out", tmp_path / "eval")
    assert code == 0, out + err
    assert (tmp_path / "eval").is_dir() and any((tmp_path / "eval").iterdir())


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``encslim prune --drop dinov2 --streaming`` of the ``.bin`` folder, in 1 MB safetensors shards."""
    from encslim.cli import main

    out = tmp_path_factory.mktemp("imof-bin") / "no-dinov2"
    try:
        main(["prune", str(FOLDER), "--drop", "dinov2", "--streaming", "--max-shard-size", "1MB", "--out", str(out)])
    except SystemExit as exit_:
        assert exit_.code == 0
    return out


def test_streaming_prune_of_bin_writes_verified_safetensors(pruned):
    names = sorted(p.name for p in pruned.iterdir())
    assert "model.safetensors.index.json" in names and not any(n.endswith(".bin") for n in names)
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 1
    manifest = json.loads((pruned / "encslim_manifest.json").read_text())
    assert manifest["executor"] == "streaming"
    assert manifest["verification"]["passed"] is True and manifest["verification"]["max_abs_diff"] <= 1e-4
    assert manifest["left_out"] == []  # the .bin shards were converted, not left out
    source = manifest["source"]["files"]
    assert {f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)} | {"pytorch_model.bin.index.json"} <= set(source)
    written = {}
    for shard in shards:
        written.update(load_file(str(pruned / shard)))
    from encslim.models.folder import Checkpoint

    source_tensors = {}
    for path in Checkpoint.open(FOLDER).files:
        source_tensors.update(torch.load(path, weights_only=True, map_location="cpu"))
    removed = ("model.dino_tower.", "model.dino_mm_projector.")
    kept = {k: v for k, v in source_tensors.items() if not k.startswith(removed)}
    assert sorted(written) == sorted(kept)
    assert all(torch.equal(written[k], v) for k, v in kept.items())


def test_pruned_model_gives_the_originals_clip_only_logits(pruned):
    golden = load_file(str(HERE / "golden.safetensors"))
    model, _, adapter = encslim.load_model(str(pruned))
    assert adapter.slot_names(model.config) == ["clip"]
    ids = golden["input_ids"][0].tolist()
    at = ids.index(-200)
    input_ids = torch.tensor([ids[:at] + [-200] * 576 + ids[at + 1:]])
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    with torch.no_grad():
        features = adapter.encode(model, {"pixel_values": golden["pixel_values"]})
        embeds = adapter.embed(model, features, batch)
        logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert (logits - golden["logits_removed_dinov2"]).abs().max().item() < 1e-4


def mmvp_loader_accepts(config):
    """MMVP's acceptance rule for a folder's ``config.json`` (tsb0601/MMVP ``LLaVA/llava``), as its code has it.

    ``model/builder.py`` ``load_pretrained_model`` builds the model with ``LlavaLlamaForCausalLM.from_pretrained``
    (a folder name holding ``llava``: a different ``model_type`` is only a transformers warning) or with
    ``AutoModelForCausalLM`` (``model/language_model/llava_llama.py`` registers ``model_type`` ``llava`` only).
    Either way ``llava_arch.LlavaMetaModel.__init__`` calls ``multimodal_encoder/builder.py``
    ``build_vision_tower`` for every config with ``mm_vision_tower``, which raises
    ``ValueError('Unknown vision tower: ...')`` unless the name starts with ``openai`` or ``laion``; past that,
    both towers and both projectors are built whatever the checkpoint holds (missing keys: a warning).
    """
    tower = config.get("mm_vision_tower")
    return tower is None or str(tower).startswith(("openai", "laion"))


def test_mmvp_loader_refuses_the_pruned_folder(pruned):
    source = json.loads((FOLDER / "config.json").read_text())
    assert mmvp_loader_accepts(source)  # the rule has teeth: MMVP opens its own folder
    config = json.loads((pruned / "config.json").read_text())
    assert not mmvp_loader_accepts(config)
    assert config["mm_vision_tower"] == "encslim-imof:" + source["mm_vision_tower"]
    assert config["model_type"] == "imof_llama" and config["architectures"] == ["ImofLlamaForCausalLM"]
    assert config["imof_towers"] == ["clip"]
    model, _, adapter = encslim.load_model(str(pruned))
    notes = " ".join(adapter.export_notes(model.config))
    assert "refuses this folder" in notes and "build_vision_tower" in notes
