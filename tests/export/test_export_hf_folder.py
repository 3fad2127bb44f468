"""``--format hf``: sharded safetensors + index, processor, card, manifest; round trip on 1/2/3 encoders."""

import json

import pytest
import torch

from encslim.errors import ConfigError, OutputExistsError, VerificationError
from encslim.files import sha256_file

from .conftest import leftovers, native_logits

VARIANTS = [("A1", ("clip", "siglip", "dinov2")), ("B", ("clip", "sam")), ("C", ("dinov2",)), ("A2", ("siglip", "convnext"))]


@pytest.mark.parametrize("fusion,encoders", VARIANTS, ids=[f"{f}-{len(e)}enc" for f, e in VARIANTS])
def test_hf_round_trip(tiny_model_dir, tmp_path, fusion, encoders):
    from encslim.export import export_hf
    from encslim.models.loading import load_model

    src = tiny_model_dir(fusion=fusion, encoders=encoders)
    out = tmp_path / "hf"
    manifest = export_hf(src, out, max_shard_size="100KB")

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 1 and all((out / f).is_file() for f in shards)
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md", "encslim_manifest.json"):
        assert (out / name).is_file(), name
    files = sorted(p.name for p in out.iterdir() if p.name != "encslim_manifest.json")
    assert sorted(manifest["files"]) == files
    assert all(manifest["files"][f] == sha256_file(out / f) for f in files)
    assert manifest["stage"] == "export" and manifest["export"]["format"] == "hf"
    assert manifest["kept_slots"] == list(encoders)

    batch, expected = native_logits(src)
    model, _, _ = load_model(out)
    assert len(index["weight_map"]) == len(model.state_dict())  # (transformers may rename legacy keys on save)
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.equal(logits, expected)
    record = manifest["verification"]["export"][0]
    assert record["matched"] and record["max_abs_diff"] == 0.0


def test_hf_dtype_conversion(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    from encslim.export import export_hf

    out = tmp_path / "bf16"
    manifest = export_hf(tiny_model_dir(fusion="A1"), out, dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert manifest["export"]["dtype"] == "bfloat16"


def _ranking(slots):
    cur = {s: {"overall": {"value": v, "ci": [v - 0.05, v + 0.05], "significant": v > 0.1,
                           "flips": {"right_to_wrong": 3, "wrong_to_right": 1}},
               "OCR & Chart": {"value": None, "ci": [None, None], "note": "acc(full) is 0"}}
           for s, v in zip(slots, (0.31, 0.02, -0.01))}
    return {"schema_version": 1, "model": "x", "slots": list(slots), "mask_mode": "removal",
            "categories": ["OCR & Chart"], "overall_is": "mean over samples",
            "accuracy": {"full": {"overall": 0.9, "OCR & Chart": 0.0}},
            "subsets": [{"kept": [slots[0]], "masked": list(slots[1:]), "accuracy": {"overall": 0.88}}],
            "cur": cur, "ig": {"overall": 0.42, "OCR & Chart": 0.1}, "shapley": {}, "shapley_method": "exact",
            "interactions": {}, "costs": {}}


BENCH = {"schema_version": 1, "environment": {"device": "cpu", "dtype": "float32"}, "full": "full",
         "models": [{"name": "full", "accuracy": {"overall": 0.9},
                     "latency": {"1": {"stages": {"vision": {"mean": 12.5}, "prefill": {"mean": 3.0},
                                                  "ttft": {"mean": 16.0}}, "decode_tokens_per_s": {"mean": 250.0}}}},
                    {"name": "pruned", "accuracy": {"overall": 0.88},
                     "latency": {"1": {"stages": {"vision": {"mean": 4.25}, "prefill": {"mean": 3.0},
                                                  "ttft": {"mean": 7.5}}, "decode_tokens_per_s": {"mean": 251.0}}}}],
         "comparisons": [{"model": "pruned", "batch_size": 1,
                          "speedup": {"vision": 2.94, "ttft": 2.13, "end_to_end": 1.4}}]}


def test_card_after_prune_with_ranking_and_bench(tiny_model_dir, tmp_path):
    from encslim.export import export_hf
    from encslim.prune.surgery import prune

    src = tiny_model_dir(fusion="A1")
    ranking_dir = tmp_path / "rank"
    ranking_dir.mkdir()
    (ranking_dir / "ranking.json").write_text(json.dumps(_ranking(["clip", "siglip", "dinov2"])))
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench.json").write_text(json.dumps(BENCH))
    pruned = tmp_path / "pruned"
    prune(src, ["siglip", "dinov2"], pruned)

    manifest = export_hf(pruned, tmp_path / "out", ranking=ranking_dir, bench=bench_dir)
    card = (tmp_path / "out" / "README.md").read_text()
    assert manifest["removed_slots"] == ["siglip", "dinov2"] and manifest["kept_slots"] == ["clip"]
    assert manifest["source_stage"] == "prune" and manifest["source_verification"]["passed"] is True
    assert "Removed encoder slot(s): `siglip`, `dinov2`" in card
    assert "| siglip (removed) | +0.020 [-0.030, +0.070] | n/a |" in card
    assert "| clip | +0.310 [+0.260, +0.360] * | n/a |" in card
    assert "| IG | 0.420 | 0.100 |" in card
    assert "| pruned | 1 | 4.25 | 3.00 | 7.50 | 251.00 | 0.880 |" in card
    assert "| pruned | 1 | 2.94x | 2.13x | 1.40x |" in card
    assert "Recorded by `encslim prune`" in card and '"passed": true' in card
    assert f'encslim.load_model("{tmp_path / "out"}")' in card


def test_hybrid_hf_export(tiny_hybrid_dir, tmp_path):
    from transformers import DeepseekVLHybridForConditionalGeneration

    from encslim.export import export_hf

    manifest = export_hf(tiny_hybrid_dir, tmp_path / "out")
    assert manifest["export"]["architecture"] == "DeepseekVLHybridForConditionalGeneration"
    assert manifest["verification"]["export"][0]["max_abs_diff"] == 0.0
    DeepseekVLHybridForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert "DeepseekVLHybridForConditionalGeneration.from_pretrained" in (tmp_path / "out" / "README.md").read_text()


def test_existing_output_refused_and_overwrite(tiny_model_dir, tmp_path):
    from encslim.export import export_hf

    src = tiny_model_dir(fusion="A1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_hf(src, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_hf(src, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    with pytest.raises(ConfigError, match="overlaps the input"):
        export_hf(src, src / "inside")


def test_failed_verification_writes_nothing(tiny_model_dir, tmp_path):
    from encslim.export import export_hf

    with pytest.raises(VerificationError, match="logits max .diff. .* > atol -1"):
        export_hf(tiny_model_dir(fusion="A1"), tmp_path / "out", atol=-1.0)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_bad_ranking_and_bench_are_one_line_errors(tiny_model_dir, tmp_path):
    from encslim.export import export_hf

    with pytest.raises(ConfigError, match="no ranking at"):
        export_hf(tiny_model_dir(fusion="A1"), tmp_path / "a", ranking=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no bench.json at"):
        export_hf(tiny_model_dir(fusion="A1"), tmp_path / "b", bench=tmp_path)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and leftovers(tmp_path) == []
