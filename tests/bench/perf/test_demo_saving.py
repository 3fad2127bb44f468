"""The demo-saving benchmark script is wired right (its timing claim is for the script, not a test)."""

import pytest

from encslim.bench.perf import demo_saving


def test_measure_prunes_and_compares(tiny_model_dir, tmp_path):
    full = tiny_model_dir("A1", ("clip", "siglip", "sam"))
    result = demo_saving.measure(full, ("sam",), batch_sizes=(1,), min_iters=2, min_seconds=0.0, warmup=0,
                                 max_new_tokens=2, work_dir=tmp_path)
    report = result["report"]
    full_entry, variant = report["models"]
    assert variant["encoders_run"] == ["clip", "siglip"] and variant["slots"] == ["clip", "siglip"]
    assert variant["flops"]["vision"] == full_entry["flops"]["vision"] - full_entry["flops"]["encoder:sam"]
    (row,) = result["rows"]
    assert row["batch_size"] == 1
    assert row["predicted"] == pytest.approx(full_entry["flops"]["encoder:sam"] / full_entry["flops"]["vision"])
    assert row["ratio"] == pytest.approx(row["measured"] / row["predicted"])
    assert row["within"] == (0.7 <= row["ratio"] <= 1.1)
    assert (tmp_path / "bench" / "bench.md").is_file()


def test_missing_demo_model_exits_2(tmp_path, capsys):
    assert demo_saving.main(["--model", str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    assert "has not shipped yet" in capsys.readouterr().err
