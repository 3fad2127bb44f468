"""Removal-plan vocabulary: prefix renames in both executors and the dry-run view; strict JSON patches."""

import pytest
from safetensors import safe_open

from encslim.errors import PlanError
from encslim.models.plan import Delete, RemovalPlan, apply_json_ops, check_plan, describe_plan


def _renumbering_plan(slots, drop):
    """A ModuleList-style plan: deleting tower 0 renumbers the later towers, as Eagle's ``vision_towers.{i}``."""
    renames = {f"vision_towers.{s}.": f"towers.{i}." for i, s in enumerate(x for x in slots if x not in drop)}
    return RemovalPlan(model_type="encslim", fusion_class="B", slots=list(slots), drop=[drop],
                       delete_keys=[Delete(f"vision_towers.{drop}.", drop), Delete(f"fusion.projectors.{drop}.", drop)],
                       prefix_renames=renames)


def _keys(folder):
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def test_prefix_rename_in_both_executors_and_dry_run(tiny_model_dir, tmp_path):
    from encslim.models.folder import Checkpoint
    from encslim.models.executor import execute_plan

    source = tiny_model_dir("B", ("clip", "siglip", "dinov2"))
    checkpoint = Checkpoint.open(source)
    plan = _renumbering_plan(["clip", "siglip", "dinov2"], "clip")
    check_plan(plan, checkpoint.shapes())
    outputs = {}
    for streaming in (True, False):
        out = tmp_path / f"s{streaming}"
        out.mkdir()
        execute_plan(plan, checkpoint, out, streaming=streaming)
        outputs[streaming] = _keys(out)
    src = _keys(source)
    for keys in outputs.values():
        assert not any(k.startswith(("vision_towers.", "fusion.projectors.clip.")) for k in keys)
        assert any(k.startswith("towers.0.") for k in keys) and any(k.startswith("towers.1.") for k in keys)
        for key, value in src.items():
            if key.startswith("vision_towers.siglip."):
                assert keys["towers.0." + key[len("vision_towers.siglip."):]].equal(value)
    assert outputs[True].keys() == outputs[False].keys()
    assert all(outputs[True][k].equal(outputs[False][k]) for k in outputs[True])
    summary = describe_plan(plan, checkpoint.shapes())
    renamed = sum(1 for k in src if k.startswith(("vision_towers.siglip.", "vision_towers.dinov2.")))
    assert summary["renamed"] == renamed > 0


def test_prefix_rename_matching_nothing_is_a_plan_error(tiny_model_dir):
    from encslim.models.folder import Checkpoint

    checkpoint = Checkpoint.open(tiny_model_dir("B", ("clip", "siglip", "dinov2")))
    plan = _renumbering_plan(["clip", "siglip", "dinov2"], "clip")
    plan.prefix_renames["vision_towers.sam."] = "towers.9."
    with pytest.raises(PlanError, match="no kept tensor under 'vision_towers.sam.'"):
        check_plan(plan, checkpoint.shapes())


def test_json_ops_fail_on_absent_paths_unless_optional():
    doc = {"a": {"b": 1}, "items": [{"name": "x"}, {"name": "y"}]}
    assert apply_json_ops(doc, [{"op": "delete", "path": "a.b"}]) == {"a": {}, "items": doc["items"]}
    assert apply_json_ops(doc, [{"op": "remove_items", "path": "items", "field": "name", "values": ["x"]}])[
        "items"] == [{"name": "y"}]
    with pytest.raises(PlanError, match="'delete a.c': no such path"):
        apply_json_ops(doc, [{"op": "delete", "path": "a.c"}])
    with pytest.raises(PlanError, match="no such path"):
        apply_json_ops(doc, [{"op": "set", "path": "missing.c", "value": 2}])
    assert apply_json_ops(doc, [{"op": "delete", "path": "a.c", "optional": True}]) == doc
    with pytest.raises(PlanError, match="unknown JSON patch op 'move'"):
        apply_json_ops(doc, [{"op": "move", "path": "a"}])
    assert doc == {"a": {"b": 1}, "items": [{"name": "x"}, {"name": "y"}]}  # the input is not changed


def test_an_adapter_without_a_removal_rule_raises_a_plan_error():
    from encslim.models.adapter import Adapter

    class NoPlan(Adapter):
        model_type = "noplan"
        slots = fusion_class = load = prepare_batch = encode = embed = encoders = parts = lambda *a, **k: None

    with pytest.raises(PlanError, match="removing encoders from a noplan model is not supported yet"):
        NoPlan().removal_plan(None, ["x"])
