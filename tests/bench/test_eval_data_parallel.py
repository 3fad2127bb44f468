"""Data-parallel evaluation: `torchrun --nproc_per_node 2` on CPU (gloo) gives one process's results."""

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from encslim.cli import cli


def test_two_processes_give_the_single_process_results(tiny_model_dir, mixed_jsonl, tmp_path):
    common = ["eval", str(tiny_model_dir("B")), "--data", str(mixed_jsonl), "--mask", "clip", "--mask", "dinov2",
              "--batch-size", "1", "--max-new-tokens", "3"]
    single = CliRunner().invoke(cli, common + ["--out", str(tmp_path / "single")], catch_exceptions=False)
    assert single.exit_code == 0, single.output
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "encslim.cli", *common, "--out", str(tmp_path / "dp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("overall is the mean over samples") == 1  # only rank 0 reports
    one = json.loads((tmp_path / "single" / "eval.json").read_text())
    two = json.loads((tmp_path / "dp" / "eval.json").read_text())
    assert two["results"] == one["results"] and two["evaluated_now"] == 12
    assert two["encoder_passes_per_sample"] == one["encoder_passes_per_sample"] == 3.0

    def read(folder):
        return [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]

    one_records, two_records = read(tmp_path / "single"), read(tmp_path / "dp")
    assert len(two_records) == len({r["key"] for r in two_records}) == 12 * 3
    assert {r["rank"] for r in two_records} == {0, 1}  # both processes did half the work
    assert {(r["key"], r["prediction"]) for r in two_records} == {(r["key"], r["prediction"]) for r in one_records}
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == ["eval.json", "records.jsonl"]
