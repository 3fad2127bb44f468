"""Every registered family through every stage of the real CLI, on its tiny model.

Parametrized over :func:`encslim.models.registry.families` plus the ``toyvlm`` family that exists only
in the tests (tests/toy_family.py): ``create-tiny``, ``inspect``, ``eval``, ``rank``, ``prune`` with
verification (one slot the family's adapter can plan to remove), ``finetune`` (LoRA, merged), every
export target the adapter declares for the pruned kept set, and ``bench``. A new family that registers
itself is checked by this file without an edit here. Each family's tiny model, pruned model and
ranking are built once per family (module-scoped fixtures, grouped by family).
"""

import contextlib
import io
import json
import re

import pytest

import encslim
from encslim.cli import main
from encslim.errors import PlanError
from encslim.models.registry import adapter_for_config, families

from . import toy_family

FAMILIES = [*families(), toy_family.TOY]
# the heaviest parts (about 40 s each on 2 cores, half the suite): the native ONNX export (its LLM graphs
# too) and the tiny Eagle X5's vision front end
SLOW_ONNX = {"native", "eagle"}
BENCH_ARGS = ("--batch-sizes", 1, "--max-new-tokens", 2, "--min-iters", 1, "--min-seconds", 0, "--warmup", 0,
              "--no-memory", "--device", "cpu")


def cli(*args):
    """``encslim ARGS`` in this process: ``(exit code, stdout, stdout + stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), out.getvalue() + err.getvalue()


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def slots_of(folder):
    """The slot names of a model folder, as its family's adapter reads them from config.json."""
    adapter = adapter_for_config(read_json(folder / "config.json"))
    return adapter.slot_names(adapter.read_config(folder))


def droppable(adapter, config):
    """The last slot whose removal the adapter can plan (the first slots are the ones families need most:
    DeepSeek-VL's SigLIP cannot go)."""
    for slot in reversed(adapter.slot_names(config)):
        try:
            adapter.removal_plan(config, [slot])
        except PlanError:
            continue
        return slot
    pytest.fail("the adapter can plan no single-slot removal")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """The family's name; the toy family is registered while its tests run."""
    if request.param == toy_family.TOY:
        with toy_family.registered():
            yield request.param
    else:
        yield request.param


@pytest.fixture(scope="module")
def tiny(family, tmp_path_factory):
    """``encslim create-tiny --family NAME``: ``(folder, encoder args, adapter, config)``."""
    out = tmp_path_factory.mktemp(family) / "tiny"
    code, _, text = cli("create-tiny", out, "--family", family)
    assert code == 0, text
    assert f"wrote {out}" in text
    encoders = [a for flag in re.findall(r"--encoder (\S+)", text) for a in ("--encoder", flag)]
    adapter = adapter_for_config(read_json(out / "config.json"))
    assert families()[family].model_types.count(adapter.model_type) == 1
    return out, tuple(encoders), adapter, adapter.read_config(out)


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    """``encslim prune --drop SLOT`` with verification: ``(folder, dropped slot, exit code, output)``."""
    folder, encoders, adapter, config = tiny
    slot = droppable(adapter, config)
    out = tmp_path_factory.mktemp("pruned") / f"no-{slot}"
    code, _, text = cli("prune", folder, "--drop", slot, "--verify", "--out", out, *encoders)
    return out, slot, code, text


@pytest.fixture(scope="module")
def pruned_ok(pruned):
    out, slot, code, text = pruned
    assert code == 0, text
    return out, slot


# ------------------------------------------------------------------------------------------ the stages
def test_inspect_lists_the_slots(tiny):
    folder, encoders, adapter, config = tiny
    code, stdout, text = cli("inspect", folder, "--json", *encoders)
    assert code == 0, text
    info = json.loads(stdout)
    assert info["model_type"] == adapter.model_type
    slots = adapter.slot_names(config)
    assert len(slots) >= 2 and [s["name"] for s in info["slots"]] == slots
    assert all(s["params_vision"] > 0 for s in info["slots"])


def test_eval_scores_the_full_and_the_masked_model(tiny, shared_mixed_jsonl, tmp_path):
    folder, encoders, adapter, config = tiny
    slot = adapter.slot_names(config)[0]
    out = tmp_path / "eval"
    code, _, text = cli("eval", folder, "--data", shared_mixed_jsonl, "--mask", slot, "--max-new-tokens", 2,
                     "--out", out, *encoders)
    assert code == 0, text
    report = read_json(out / "eval.json")
    assert report["num_samples"] == 12 and report["mask_mode"] == "removal"
    assert [r["masked"] for r in report["results"]] == [[], [slot]]
    for row in report["results"]:
        assert 0.0 <= row["accuracy"]["overall"] <= 1.0
        assert set(row["accuracy"]) == {"overall", "OCR & Chart", "General", "Knowledge"}


def test_rank_masks_each_slot(tiny, shared_mixed_jsonl, tmp_path):
    folder, encoders, adapter, config = tiny
    slots = adapter.slot_names(config)
    out = tmp_path / "rank"
    code, _, text = cli("rank", folder, "--data", shared_mixed_jsonl, "--out", out, "--bootstrap", 20,
                     "--max-new-tokens", 2, *encoders)
    assert code == 0, text
    data = read_json(out / "ranking.json")
    assert data["slots"] == slots and data["mask_mode"] == "removal"
    assert sorted(tuple(r["masked"]) for r in data["subsets"]) == sorted([(), *((s,) for s in slots)])
    assert set(data["cur"]) == set(slots)
    assert (out / "ranking.md").read_text().startswith("# Encoder ranking")


def test_prune_verifies_and_drops_one_slot(tiny, pruned):
    folder, _, adapter, config = tiny
    out, slot, code, text = pruned
    assert code == 0, text
    assert "verification: passed" in text
    manifest = read_json(out / "encslim_manifest.json")
    verification = manifest["verification"]
    assert verification["passed"] is True and verification["max_abs_diff"] <= 1e-4
    kept = [s for s in adapter.slot_names(config) if s != slot]
    assert manifest["removed_slots"] == [slot] and manifest["kept_slots"] == kept
    assert slots_of(out) == kept


def test_finetune_lora_writes_a_folder_that_loads(pruned_ok, shared_mixed_jsonl, tmp_path):
    folder, slot = pruned_ok
    kept = slots_of(folder)
    out = tmp_path / "ft"
    code, _, text = cli("finetune", "train", folder, "--data", shared_mixed_jsonl, "--out", out, "--max-steps", 2,
                     "--batch-size", 4, "--lora-r", 4, "--merge")
    assert code == 0, text
    summary = read_json(out / "finetune.json")
    assert summary["steps"] == 2 and summary["parts"]["lora_modules"] > 0
    model, _, adapter = encslim.load_model(str(out))
    assert adapter.slot_names(model.config) == kept and slot not in kept


def export_formats_of(tiny, folder):
    adapter, kept = tiny[2], slots_of(folder)
    targets = adapter.export_targets(adapter.read_config(folder), kept)
    assert "hf" in targets
    return targets


def check_export(folder, fmt, out):
    code, _, text = cli("export", folder, "--format", fmt, "--out", out)
    assert code == 0, f"{fmt}: {text}"
    records = read_json(out / "encslim_manifest.json")["verification"]["export"]
    assert records and all(r["matched"] for r in records), (fmt, records)
    assert f"(format {fmt})" in text


def test_export_every_declared_target(tiny, pruned_ok, tmp_path):
    folder, _ = pruned_ok
    formats = [f for f in export_formats_of(tiny, folder) if f != "onnx"]
    for fmt in formats:
        check_export(folder, fmt, tmp_path / fmt)
    assert slots_of(tmp_path / "hf") == slots_of(folder)


@pytest.mark.parametrize("family", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_ONNX else [])
                                    for name in FAMILIES], indirect=True)
def test_export_onnx_where_declared(family, tiny, pruned_ok, tmp_path):
    folder, _ = pruned_ok
    if "onnx" not in export_formats_of(tiny, folder):
        pytest.skip(f"{family} declares no onnx export for its pruned kept set")
    check_export(folder, "onnx", tmp_path / "onnx")


def test_bench_full_against_pruned(tiny, pruned_ok, shared_mixed_jsonl, tmp_path):
    source, encoders, adapter, config = tiny
    folder, slot = pruned_ok
    out = tmp_path / "bench"
    code, _, text = cli("bench", source, folder, "--data", shared_mixed_jsonl, "--out", out, *BENCH_ARGS, *encoders)
    assert code == 0, text
    report = read_json(out / "bench.json")
    models = {m["role"]: m for m in report["models"]}
    assert sorted(models) == ["full", "variant"]
    full, variant = models["full"], models["variant"]
    slots = adapter.slot_names(config)
    assert full["encoders_run"] == slots and variant["encoders_run"] == [s for s in slots if s != slot]
    assert variant["params"]["total"] < full["params"]["total"]
    assert variant["accuracy"] is not None and full["accuracy"] is not None
