"""Module-local verification: a prune whose model does not fit in memory is verified, not shipped unverified.

Kept tensors byte-equal to the source, every sliced/folded module computing on random inputs (the removed
slot's input zeroed) what its pruned form computes; recorded in the manifest; a planted wrong slice, a
forgotten folded constant or a corrupted kept tensor fails the prune (exit 2 / VerificationError naming it,
nothing written)."""

import dataclasses
import json
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

from encslim.cli import main
from encslim.errors import VerificationError
from encslim.models import executor
from encslim.models.folder import Checkpoint
from encslim.prune import surgery
from encslim.prune.verify import verify_module_local

DROP = {"native": "siglip", "eagle": "sam-1024", "hybrid": "sam"}
# the module each plan changes, and the tensors of it the plan slices or folds
CHANGED = {
    "native": {"fusion.projector.0": ["fusion.projector.0.weight"]},
    "eagle": {"model.mm_projector.0": ["model.mm_projector.0.weight"]},
    "hybrid": {"model.aligner.linear1": ["model.aligner.linear1.weight", "model.aligner.linear1.bias"]},
}


def run(argv, capsys):
    """Run the CLI in-process; returns ``(exit code, stdout, stderr)``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def eagle_dir(tmp_path_factory):
    """A tiny Eagle X5 folder made by ``encslim create-tiny --family eagle`` (read-only)."""
    out = tmp_path_factory.mktemp("eagle") / "eagle"
    subprocess.run([sys.executable, "-m", "encslim.cli", "create-tiny", str(out), "--family", "eagle"], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def source(request, tiny_model_dir, hybrid_dir, eagle_dir):
    return {"native": lambda: tiny_model_dir("A1"), "eagle": lambda: eagle_dir, "hybrid": lambda: hybrid_dir}[
        request.param]()


def _unchanged(src, out, changed):
    """Output tensors outside the changed ones that equal a source tensor exactly (read by safetensors)."""
    source = {}
    for path in Checkpoint.open(src).files:
        source.update(load_file(str(path)))
    pruned = {}
    for path in Checkpoint.open(out).files:
        pruned.update(load_file(str(path)))
    by_bytes = {(v.dtype.str, v.shape, v.tobytes()) for v in source.values()}
    kept = [k for k in pruned if k not in changed]
    assert all((pruned[k].dtype.str, pruned[k].shape, pruned[k].tobytes()) in by_bytes for k in kept)
    return len(kept)


@pytest.mark.parametrize("source", list(DROP), indirect=True)
def test_a_model_that_does_not_fit_is_verified_module_locally(source, request, tmp_path, capsys, monkeypatch):
    family = request.node.callspec.params["source"]
    monkeypatch.setattr(surgery, "_fits_in_memory", lambda checkpoint: False)  # an 18 GB model on a 24 GB machine
    out = tmp_path / "out"
    code, stdout, err = run(["prune", source, "--drop", DROP[family], "--out", out], capsys)
    assert code == 0, err

    verification = json.loads((out / "encslim_manifest.json").read_text())["verification"]
    assert verification["method"] == "module-local" and verification["passed"] is True
    assert verification["reason"].startswith("the model does not fit in memory")
    assert {name: entry["tensors"] for name, entry in verification["modules"].items()} == CHANGED[family]
    assert all(entry["max_abs_diff"] <= 1e-4 for entry in verification["modules"].values())
    assert verification["max_module_diff"] <= 1e-4 and verification["tolerance"] == 1e-4
    changed = {key for keys in CHANGED[family].values() for key in keys}
    assert verification["tensors_byte_equal"] == _unchanged(source, out, changed) > 50
    manifest = json.loads((out / "encslim_manifest.json").read_text())
    assert manifest["executor"] == "streaming"
    module = next(iter(CHANGED[family]))
    assert f"verification (module-local: the model does not fit in memory" in stdout
    assert f"{verification['tensors_byte_equal']} kept tensors byte-equal to the source" in stdout
    assert f"  {module}: max |diff|" in stdout


def test_the_automatic_choice_stays_full_when_the_model_fits(tiny_model_dir, tmp_path):
    manifest = surgery.prune(tiny_model_dir("A1"), ["siglip"], tmp_path / "out")
    assert manifest["verification"]["method"] == "full" and manifest["verification"]["passed"] is True
    assert manifest["verification"]["samples"] == 4


def test_a_deleting_plan_is_verified_by_its_kept_bytes(tiny_model_dir, tmp_path):
    manifest = surgery.prune(tiny_model_dir("C"), ["siglip"], tmp_path / "out", verify_method="module-local")
    verification = manifest["verification"]
    assert verification["passed"] is True and verification["modules"] == {}
    assert verification["reason"] == "--verify-method module-local"
    assert verification["tensors_byte_equal"] == _unchanged(tiny_model_dir("C"), tmp_path / "out", set())
    assert "slices and folds nothing" in verification["note"]


def test_module_local_streaming_prune_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from encslim.cli import main\n"
        f"main(['prune', {str(tiny_model_dir('A1'))!r}, '--drop', 'siglip', '--out', {str(out)!r}, '--streaming',"
        " '--verify-method', 'module-local'])\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((out / "encslim_manifest.json").read_text())["verification"]["passed"] is True


def _shifted_slice(real):
    """The executor's ``produce`` with every slice's first kept range moved one column on (a planted bug)."""

    def produce(tensor, stash):
        if tensor.op == "slice":
            (start, stop), *rest = tensor.keep
            tensor = dataclasses.replace(tensor, keep=((start + 1, stop + 1), *rest))
        return real(tensor, stash)

    return produce


@pytest.mark.parametrize("source", ["native", "eagle"], indirect=True)
def test_a_wrong_slice_fails_the_prune_naming_the_module(source, request, tmp_path, capsys, monkeypatch):
    family = request.node.callspec.params["source"]
    monkeypatch.setattr(executor, "produce", _shifted_slice(executor.produce))
    out = tmp_path / "out"
    code, _, err = run(["prune", source, "--drop", DROP[family], "--out", out, "--streaming",
                        "--verify-method", "module-local"], capsys)
    module = next(iter(CHANGED[family]))
    assert code == 2
    assert f"module-local verification failed: module '{module}'" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary folder left


def test_a_forgotten_folded_constant_fails_the_hybrid_prune(hybrid_dir, tmp_path, monkeypatch):
    real = executor.produce

    def produce(tensor, stash):  # build linear1.bias without the constant the SAM branch leaves
        if tensor.op == "fold" and tensor.key.endswith("linear1.bias"):
            first = tensor.parts[0]
            tensor = dataclasses.replace(tensor, parts=(("zeros", first.shape), *tensor.parts[1:]))
        return real(tensor, stash)

    monkeypatch.setattr(executor, "produce", produce)
    with pytest.raises(VerificationError, match=r"module 'model\.aligner\.linear1' .* differs from the masked source"):
        surgery.prune(hybrid_dir, ["sam"], tmp_path / "out", streaming=True, verify_method="module-local")
    assert not (tmp_path / "out").exists()


def test_a_corrupted_kept_tensor_is_named(tiny_model_dir, tmp_path):
    source = tiny_model_dir("A1")
    out = tmp_path / "out"
    surgery.prune(source, ["siglip"], out, verify=False, streaming=True)
    plan = surgery.prepare(source, ["siglip"], torch_free=True)[2]
    assert verify_module_local(source, out, plan)["passed"] is True
    key = "language_model.model.embed_tokens.weight"
    info = Checkpoint.open(out).tensors[key]
    with open(info.file, "r+b") as handle:  # flip one bit of one byte in the middle of the tensor
        handle.seek(info.start + info.nbytes // 2)
        byte = handle.read(1)[0]
        handle.seek(info.start + info.nbytes // 2)
        handle.write(bytes([byte ^ 1]))
    with pytest.raises(VerificationError, match=rf"tensor '{key}' \(kept unchanged from '{key}'\) differs"):
        verify_module_local(source, out, plan)


def test_no_verify_contradicts_a_verify_method(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(["prune", tiny_model_dir("A1"), "--drop", "siglip", "--out", tmp_path / "out", "--no-verify",
                        "--verify-method", "module-local"], capsys)
    assert code == 2 and "--no-verify contradicts --verify-method module-local" in err
    assert not (tmp_path / "out").exists()
