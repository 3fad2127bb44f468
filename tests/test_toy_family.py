"""What is particular to the ``toyvlm`` family (tests/toy_family.py), a family defined in the tests alone.

Every stage's CLI runs on it in tests/test_conformance.py, as on every registered family; here: its
parameter and FLOP counts as ``inspect`` reports them, the feature cache under ``eval`` (each encoder
once per sample, whatever the masks), and the weights ``prune`` writes (its slot's tower keys gone,
its projector columns sliced).
"""

import json

import pytest
from safetensors import safe_open

from . import toy_family
from .toy_family import TOY


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    with toy_family.registered():
        folder = tmp_path_factory.mktemp("toy") / "toy"
        toy_family.create(folder)
        yield folder


def test_inspect_counts_the_toy_slots(toy_dir):
    from encslim.models.inspect import inspect_model

    info = inspect_model(toy_dir)
    assert info["model_type"] == TOY and info["fusion"]["class"] == "A1"
    assert [s["name"] for s in info["slots"]] == ["conv", "patch"]
    conv = info["slots"][0]
    assert conv["params_vision"] == 3 * 24 * 8 * 8 + 24 and conv["params_fusion"] == 24 * 32
    assert all(s["vision_flops"] > 0 for s in info["slots"])
    assert info["export_targets"] == ["hf"]


def test_eval_cli_runs_each_encoder_once_per_sample(toy_dir, mixed_jsonl, tmp_path):
    from click.testing import CliRunner

    from encslim.cli import cli

    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", str(toy_dir), "--data", str(mixed_jsonl), "--mask", "patch",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eval.json").read_text())
    assert data["encoder_passes_per_sample"] == pytest.approx(2.0)  # both encoders once per sample


def test_prune_deletes_the_tower_and_slices_the_projector(toy_dir, tmp_path):
    from encslim.prune.surgery import prune

    manifest = prune(toy_dir, ["patch"], tmp_path / "pruned", verify=True)
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_diff"] <= 1e-4
    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert not any(k.startswith("towers.patch.") for k in keys)
        assert any(k.startswith("towers.conv.") for k in keys)
        assert tuple(f.get_slice("projector.0.weight").get_shape()) == (32, 24)
    pruned_config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert [e["name"] for e in pruned_config["encoders"]] == ["conv"]
    processor = json.loads((tmp_path / "pruned" / toy_family.PROCESSOR_FILE).read_text())
    assert [e["name"] for e in processor["encoders"]] == ["conv"]
