"""Provenance survives every stage: rank -> prune -> finetune (merged) -> export, as the demo recipe chains
them; every manifest carries the whole lineage and every model card states it."""

import json

import pytest

from encslim.provenance import StageRecord, read_manifest, write_manifest

REMOVED = ["siglip"]


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tmp_path_factory):
    """Folders of every stage of the chain (built once for the module)."""
    from encslim.export import export_model
    from encslim.finetune.merge import merge_adapter
    from encslim.finetune.train import finetune
    from encslim.prune import select
    from encslim.prune.rank import rank
    from encslim.prune.surgery import prune
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("lineage")
    (root / "images").mkdir()
    items = []
    for i in range(8):
        pixels = np.random.RandomState(i).randint(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        items.append({"id": f"q{i}", "image": f"images/{i}.png", "category": ["General", "Knowledge"][i % 2],
                      "question": "What colour is the shape?", "answer": "red"})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    source = tiny_model_dir()
    rank(source, [data], subsets="single", bootstrap=0, max_new_tokens=2, out=root / "ranking")
    ranking = select.read_ranking(root / "ranking")
    selection = select.select(ranking["slots"], drop=REMOVED)
    selection.details.update(ranking=ranking["_path"], ranking_sha256=ranking["_sha256"])
    prune(source, selection.drop, root / "pruned", selection=selection.to_dict())
    finetune(root / "pruned", [data], root / "finetuned", max_steps=2, batch_size=4, merge=True, progress=False)
    finetune(root / "pruned", [data], root / "lora", max_steps=1, batch_size=4, progress=False)
    merge_adapter(root / "lora", root / "merged")
    export_model(root / "finetuned", root / "export_hf", fmt="hf")
    export_model(root / "pruned", root / "export_pruned", fmt="hf")
    return {"source": source.resolve(), "ranking": ranking["_path"], "root": root}


@pytest.mark.parametrize("stage,folder", [("prune", "pruned"), ("finetune", "finetuned"), ("export", "export_hf")])
def test_every_manifest_carries_the_lineage(chain, stage, folder):
    manifest = read_manifest(chain["root"] / folder)
    assert manifest["stage"] == stage
    assert manifest["removed_slots"] == REMOVED  # accumulated, not reset by finetune or export
    assert manifest["origin"]["path"] == str(chain["source"])
    stages = [entry["stage"] for entry in manifest["lineage"]]
    assert stages == {"prune": ["prune"], "finetune": ["prune", "finetune"],
                      "export": ["prune", "finetune", "export"]}[stage]
    first = manifest["lineage"][0]
    assert first["source"] == str(chain["source"]) and first["removed_slots"] == REMOVED
    assert first["ranking"]["details"]["ranking"] == chain["ranking"]  # the ranking used
    assert first["verification"]["passed"] is True
    assert "siglip" not in manifest["kept_slots"]
    assert manifest["ranking"]["details"]["ranking"] == chain["ranking"]


def test_merge_of_an_adapter_keeps_the_lineage_of_the_finetune(chain):
    manifest = read_manifest(chain["root"] / "merged")
    assert [e["stage"] for e in manifest["lineage"]] == ["prune", "finetune", "finetune-merge"]
    assert manifest["removed_slots"] == REMOVED and manifest["origin"]["path"] == str(chain["source"])


def test_finetune_summary_counts_samples_seen(chain):
    summary = json.loads((chain["root"] / "finetuned" / "finetune.json").read_text())
    assert summary["samples_seen"] == 2 * 4 and summary["loss_window"] == 1
    assert {"loss_start", "loss_end", "loss_rose"} <= set(summary)


@pytest.mark.parametrize("folder", ["export_hf", "export_pruned"])
def test_model_card_states_the_lineage(chain, folder):
    card = (chain["root"] / folder / "README.md").read_text()
    assert "No encoder was removed" not in card
    assert "Removed encoder slot(s): `siglip`" in card
    assert "## Lineage" in card and f"Original model: `{chain['source']}`" in card
    assert "1. prune: removed siglip" in card and "verification passed (max |logit diff|" in card
    assert "siglip (removed)" in card  # the ranking's CUR/IG table, found through the manifest
    assert "information gap" in card and "information gain" not in card
    if folder == "export_hf":
        assert "2. finetune: kept clip, dinov2; verification saved weights complete, merged logits within" in card
        assert "3. export (hf)" in card


def test_lineage_of_an_original_model_starts_with_it(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir(), out.mkdir()
    (source / "config.json").write_text("{}")
    manifest = write_manifest(out, StageRecord("prune", removed=["a"], kept=["b"]), source=source)
    assert manifest["origin"] == {"path": str(source.resolve())}
    assert [e["stage"] for e in manifest["lineage"]] == ["prune"]
    again = tmp_path / "again"
    again.mkdir()
    manifest = write_manifest(again, StageRecord("prune", removed=["b"], kept=["c"]), source=out)
    assert manifest["removed_slots"] == ["a", "b"] and manifest["origin"] == {"path": str(source.resolve())}


def test_legacy_manifest_without_lineage_is_inherited(tmp_path):
    parent, out = tmp_path / "parent", tmp_path / "out"
    parent.mkdir(), out.mkdir()
    legacy = {"stage": "prune", "source": {"path": "/models/original", "files": {}}, "removed_slots": ["x"],
              "kept_slots": ["y"], "plan": {"drop": ["x"]}, "ranking": None, "verification": {"passed": True}}
    (parent / "encslim_manifest.json").write_text(json.dumps(legacy))
    manifest = write_manifest(out, StageRecord("finetune", kept=["y"]), source=parent)
    assert manifest["origin"] == {"path": "/models/original"} and manifest["removed_slots"] == ["x"]
    assert [e["stage"] for e in manifest["lineage"]] == ["prune", "finetune"]
    assert manifest["plan"] == {"drop": ["x"]}
