"""The torch-free start-up of ``encslim prune --streaming --no-verify`` (native family): the plan built from
config.json alone equals the adapter's, the header check accepts what the structure check accepts and
refuses foreign weights, the CLI imports neither torch nor transformers, and its output is byte-identical
to the full path's, with manifest digests equal to sha256 of the files."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from encslim.errors import ModelLoadError
from encslim.models.families.native import plan as native_plan
from encslim.models.plan import apply_json_ops
from encslim.prune import surgery

FUSIONS = {  # fusion -> encoders (ConvNeXt and SAM exercise the conv and neck feature layouts)
    "A1": ("clip", "siglip", "dinov2"),
    "A2": ("clip", "siglip", "convnext"),
    "B": ("clip", "convnext", "sam"),
    "C": ("siglip", "dinov2", "sam"),
}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saved(config):
    """The config.json document ``save_pretrained`` writes for ``config``."""
    return json.loads(config.to_json_string())


def test_tables_match_the_full_config():
    from encslim.models.families.native import configuration as full

    assert native_plan.BACKBONES == full.BACKBONES
    assert native_plan.FUSION_TYPES == full.FUSION_TYPES
    assert native_plan.PROJECTORS == full.PROJECTORS and native_plan.CLS_MODES == full.CLS_MODES


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_plan_from_config_json_equals_the_adapters(fusion):
    from encslim.models.families.native.configuration import EncslimConfig
    from encslim.models.families.native.adapter import NativeAdapter
    from encslim.models.families.native.tiny import tiny_config

    config = tiny_config(fusion, FUSIONS[fusion])
    adapter = NativeAdapter()
    for _ in range(2):  # the source, then (A2: with removed_dims and a layout) the pruned config
        light = native_plan.plan_config(_saved(config))
        assert light is not None
        assert light.slot_names == config.slot_names and light.fusion_class == config.fusion_class
        for slot in config.slot_names:
            assert light.slot_feature_dim(slot) == config.slot_feature_dim(slot)
            assert light.slot_num_tokens(slot) == config.slot_num_tokens(slot)
        for slot in config.slot_names:
            assert (native_plan.removal_plan(light, [slot]).to_dict()
                    == adapter.removal_plan(config, [slot]).to_dict())
        if len(config.slot_names) < 3:
            break
        plan = adapter.removal_plan(config, [config.slot_names[0]])
        config = EncslimConfig(**apply_json_ops(_saved(config), plan.config_patch))


def _spoilt(fusion, change):
    from encslim.models.families.native.tiny import tiny_config

    data = _saved(tiny_config(fusion, FUSIONS[fusion]))
    change(data)
    return data


@pytest.mark.parametrize("change", [
    lambda d: d["encoders"][0]["vision_config"].pop("hidden_size"),  # the transformers default would decide
    lambda d: d["encoders"][0]["vision_config"].update(model_type="beit"),
    lambda d: d["encoders"][1].update(name=d["encoders"][0]["name"]),
    lambda d: d["encoders"][0].update(name="not-an-identifier"),
    lambda d: d["fusion"].update(type="gated"),
    lambda d: d["fusion"].update(projector="mlp3x"),
    lambda d: d["encoders"][0].pop("image_size"),
    lambda d: d.pop("text_config"),
    lambda d: d.update(model_type="llava"),
    lambda d: d.update(encoders=[]),
], ids=["default-size", "backbone", "duplicate", "name", "fusion", "projector", "image-size", "text", "type",
        "no-encoders"])
def test_plan_config_declines_what_only_the_full_config_can_decide(change):
    assert native_plan.plan_config(_spoilt("A1", change)) is None


@pytest.mark.parametrize("fusion", ["A1", "B", "C"])
def test_header_check_accepts_saved_models_and_their_pruned_outputs(fusion, tiny_model_dir, tmp_path):
    from encslim.models.folder import Checkpoint

    source = tiny_model_dir(fusion, FUSIONS[fusion])
    light = native_plan.plan_config(json.loads((source / "config.json").read_text()))
    assert native_plan.header_problems(light, Checkpoint.open(source).shapes()) == []
    out = tmp_path / "out"
    surgery.prune(source, [FUSIONS[fusion][1]], out, verify=False, streaming=True)
    light = native_plan.plan_config(json.loads((out / "config.json").read_text()))
    assert native_plan.header_problems(light, Checkpoint.open(out).shapes()) == []


def test_header_check_refuses_weights_of_another_config(tiny_model_dir, tmp_path):
    from encslim.models.folder import Checkpoint

    source = tmp_path / "spoilt"
    shutil.copytree(tiny_model_dir("B", FUSIONS["B"]), source)
    data = json.loads((source / "config.json").read_text())
    data["encoders"] = [e for e in data["encoders"] if e["name"] != "sam"]  # its tower stays in the weights
    (source / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="do not match its config.json.*sam"):
        surgery.prune(source, ["convnext"], tmp_path / "out", verify=False, streaming=True)
    assert not (tmp_path / "out").exists()
    shapes = Checkpoint.open(source).shapes()
    light = native_plan.plan_config(data)
    no_projector = {k: v for k, v in shapes.items() if not k.startswith(("fusion.projectors.clip.", "vision_towers.sam."))}
    assert any("no projector for slot 'clip'" in p for p in native_plan.header_problems(light, no_projector))
    stray = dict(no_projector, **{"fusion.projectors.clip.0.weight": (64, 31)}, extra=(1,))
    problems = native_plan.header_problems(light, stray)
    assert any("fusion.projectors.clip.0.weight: [64, 31], expected size 32" in p for p in problems)
    assert any("unexpected (e.g. extra)" in p for p in problems)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "encslim_manifest.json"}


def test_cli_prune_streaming_no_verify_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    source = tiny_model_dir("A1")
    out = tmp_path / "torch-free"
    code = (
        "import sys\n"
        "from encslim.cli import main\n"
        f"main(['prune', {str(source)!r}, '--drop', 'siglip', '--out', {str(out)!r}, '--no-verify', '--streaming',"
        " '--max-shard-size', '20kB'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors.torch') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert "verification: skipped" in run.stdout

    monkeypatch.setattr(surgery, "_torch_free", lambda folder, config=None: None)  # the adapter's path: meta-model checks
    full = tmp_path / "full"
    surgery.prune(source, ["siglip"], full, verify=False, streaming=True, max_shard_size="20kB")
    assert len([n for n in _files(out) if n.endswith(".safetensors")]) > 1
    assert _files(out) == _files(full)  # weights, index, config and processor files, byte for byte

    manifest = json.loads((out / "encslim_manifest.json").read_text())
    on_disk = {p.name: _sha(p) for p in out.iterdir() if p.name != "encslim_manifest.json"}
    assert manifest["files"] == on_disk  # the digests are sha256 of the files
    assert manifest["source"]["files"] == {p.name: _sha(p) for p in source.iterdir() if p.is_file()}
    full_manifest = json.loads((full / "encslim_manifest.json").read_text())
    for key in ("files", "plan", "summary", "io", "removed_slots", "kept_slots", "verification", "left_out"):
        if key == "io":
            assert {k: v for k, v in manifest[key].items() if k != "seconds"} == \
                   {k: v for k, v in full_manifest[key].items() if k != "seconds"}
        else:
            assert manifest[key] == full_manifest[key]


def test_the_model_built_anyway_takes_the_full_checks(tiny_model_dir, tmp_path, monkeypatch):
    """Verification (or the in-memory executor) builds the model: the meta-model structure check runs."""
    calls = []
    real = surgery._check_structure
    monkeypatch.setattr(surgery, "_check_structure", lambda *a: calls.append(a[2]) or real(*a))
    surgery.prune(tiny_model_dir("A1"), ["siglip"], tmp_path / "a", verify=False)  # fits: in-memory executor
    assert calls == [str(tiny_model_dir("A1")), "the pruned output"]
    calls.clear()
    surgery.prune(tiny_model_dir("A1"), ["siglip"], tmp_path / "b", verify=False, streaming=True)
    assert calls == []
