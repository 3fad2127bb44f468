"""Physical removal on native models: every fusion class, both executors, verification, bad input."""

import json

import pytest
import torch

from encslim.errors import ModelLoadError, OutputExistsError, PlanError, ConfigError, VerificationError
from encslim.prune.surgery import prune

DROP = "siglip"  # the middle slot: A1/A2 keep two separate channel ranges


def _load(path):
    from encslim.models.families.native.modeling import EncslimForConditionalGeneration
    from encslim.models.families.native.processing import EncslimProcessor

    model, info = EncslimForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    return model.eval(), EncslimProcessor.from_pretrained(path), info


def _slot_params(model, slot):
    """Parameters that exist only for ``slot``, counted from the modules (not from any plan)."""
    count = sum(p.numel() for p in model.vision_towers[slot].parameters())
    fusion, cls = model.fusion, model.config.fusion_class
    dim = model.config.slot_feature_dim(slot)
    if cls == "A1":
        count += fusion.projector[0].out_features * dim
    elif cls == "A2":
        pass  # exact A2 removal keeps the slot's LayerNorm entries and projector columns (its block stays zeros)
    elif cls == "B":
        count += sum(p.numel() for p in fusion.projectors[slot].parameters())
    else:
        count += sum(p.numel() for m in (fusion.k_proj[slot], fusion.v_proj[slot]) for p in m.parameters())
    return count


def _logits(model, processor, images, masked=()):
    prompts = [processor.build_prompt(q) for q in ("What is it?", "Which colour?", "How many?", "Read it.")]
    batch = processor(text=prompts, images=images, masked_slots=list(masked))
    with torch.no_grad():
        return model(**batch, masked_slots=list(masked)).logits, batch["attention_mask"].bool()


@pytest.mark.parametrize("fusion", ["A1", "A2", "B", "C"])
def test_every_fusion_class_prunes_to_a_smaller_loadable_model(fusion, tiny_model_dir, tmp_path, folder_digest,
                                                               probe_images):
    source = tiny_model_dir(fusion)
    before = folder_digest(source)
    manifest = prune(source, [DROP], tmp_path / "out")
    assert folder_digest(source) == before  # the source is never modified

    full, full_proc, _ = _load(source)
    pruned, pruned_proc, info = _load(tmp_path / "out")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert pruned.config.slot_names == ["clip", "dinov2"] and pruned_proc.slot_names == ["clip", "dinov2"]
    assert DROP not in pruned.vision_towers
    assert not [k for k in pruned.state_dict() if f".{DROP}." in k or k.startswith(f"vision_towers.{DROP}")]
    n_full = sum(p.numel() for p in full.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_full - n_pruned == _slot_params(full, DROP)
    assert manifest["summary"]["removed_per_slot"][DROP]["params"] == n_full - n_pruned

    ref, keep = _logits(full, full_proc, probe_images, masked=[DROP])
    got, _ = _logits(pruned, pruned_proc, probe_images)
    diff = (ref - got).abs()[keep].max().item()
    verification = manifest["verification"]
    # every class is exact; A2 (LayerNorm-first) because the removed block enters the LayerNorm as zeros
    assert diff <= 1e-4 and verification["passed"] is True and verification["max_abs_diff"] <= 1e-4
    assert manifest["plan"]["exact"] is True
    unmasked, _ = _logits(full, full_proc, probe_images)
    if fusion != "B":  # B changes the sequence length; elsewhere masking must matter
        assert (unmasked - ref).abs()[keep].max().item() > 1e-3
    if fusion == "A2":
        assert pruned.config.fusion["removed_dims"] == {DROP: full.config.slot_feature_dim(DROP)}
        assert pruned.config.fusion["layout"] == full.config.slot_names
    assert abs(verification["max_abs_diff"] - diff) < 1e-5


def test_manifest_records_source_plan_and_hashes(tiny_model_dir, tmp_path, folder_digest):
    source = tiny_model_dir("C")
    manifest = prune(source, ["clip"], tmp_path / "out", verify=False)
    on_disk = json.loads((tmp_path / "out" / "encslim_manifest.json").read_text())
    assert on_disk["removed_slots"] == ["clip"] and on_disk["kept_slots"] == ["siglip", "dinov2"]
    assert on_disk["files"] == {k: v for k, v in folder_digest(tmp_path / "out").items()
                                if k != "encslim_manifest.json"}
    assert on_disk["source"]["files"] == folder_digest(source)
    assert on_disk["plan"]["drop"] == ["clip"] and on_disk["verification"]["skipped"] is True
    assert {"encslim", "torch", "transformers", "safetensors"} <= set(on_disk["versions"])
    assert manifest["files"] == on_disk["files"]


def test_streaming_and_in_memory_executors_write_identical_shards(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    source = tiny_model_dir("A1")
    outs = {}
    for name, streaming in (("stream", True), ("memory", False)):
        manifest = prune(source, ["clip"], tmp_path / name, streaming=streaming, max_shard_size="300KB", verify=False)
        assert manifest["executor"] == ("streaming" if streaming else "in-memory")
        outs[name] = manifest["files"]
    shards = sorted(k for k in outs["stream"] if k.endswith(".safetensors"))
    assert len(shards) >= 2 and "model.safetensors.index.json" in outs["stream"]
    index = json.loads((tmp_path / "stream" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    a, b = {}, {}
    for shard in shards:
        a.update(load_file(tmp_path / "stream" / shard))
        b.update(load_file(tmp_path / "memory" / shard))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["fusion.projector.0.weight"].shape == (64, 64)
    assert {k: outs["stream"][k] for k in shards} == {k: outs["memory"][k] for k in shards}  # byte-identical

    # a sharded source streams too, and the result loads and verifies
    manifest = prune(tmp_path / "stream", ["dinov2"], tmp_path / "twice", streaming=True, verify=True)
    assert manifest["kept_slots"] == ["siglip"] and manifest["verification"]["passed"] is True


def test_dry_run_describes_and_writes_nothing(tiny_model_dir, tmp_path):
    result = prune(tiny_model_dir("B"), ["clip", "dinov2"], tmp_path / "never", dry_run=True)
    assert not (tmp_path / "never").exists()
    summary = result["summary"]
    assert set(summary["removed_per_slot"]) == {"clip", "dinov2"}
    assert summary["params_before"] - summary["params_after"] == sum(
        v["params"] for v in summary["removed_per_slot"].values())
    assert "- encoders[name=clip]" in summary["config_diff"]
    assert "- image_tokens.clip: 16" in summary["processor_diff"]["processor_config.json"]


def test_bad_inputs_raise_one_line_errors_and_write_nothing(tiny_model_dir, tmp_path):
    import shutil

    source = tiny_model_dir("A1")
    out = tmp_path / "out"
    with pytest.raises(PlanError, match="unknown slot.*sam.*slots are clip, siglip, dinov2"):
        prune(source, ["sam"], out)
    with pytest.raises(PlanError, match="every encoder"):
        prune(source, ["clip", "siglip", "dinov2"], out)
    with pytest.raises(ConfigError, match="overlaps the input"):
        prune(source, ["clip"], source / "pruned")
    bad = tmp_path / "truncated"
    shutil.copytree(source, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.truncate(4000)
    with pytest.raises(ModelLoadError, match=r"model.safetensors is truncated or corrupt"):
        prune(bad, ["clip"], out)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(source, mismatch)
    shutil.copy(tiny_model_dir("C") / "config.json", mismatch / "config.json")
    with pytest.raises(PlanError, match="checkpoint keys do not match config.json"):
        prune(mismatch, ["clip"], out)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prune(source, ["clip"], out)
    assert prune(source, ["clip"], out, overwrite=True, verify=False)["kept_slots"] == ["siglip", "dinov2"]


def test_verification_fails_on_a_wrong_exact_result(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from encslim.models.loading import adapter_for
    from encslim.prune.verify import verify_pruned

    source = tiny_model_dir("A1")
    prune(source, ["clip"], tmp_path / "out", verify=False)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    weights["fusion.projector.0.weight"][:, 0] += 0.5  # a surgery bug: wrong columns
    save_file(weights, tmp_path / "out" / "model.safetensors", metadata={"format": "pt"})
    from transformers import AutoConfig

    plan = adapter_for(source).removal_plan(AutoConfig.from_pretrained(source), ["clip"])
    with pytest.raises(VerificationError, match="differ from the masked model's"):
        verify_pruned(source, tmp_path / "out", plan, num_samples=2)
