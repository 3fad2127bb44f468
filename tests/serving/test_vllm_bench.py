"""``encslim bench --engine vllm`` through the CLI: a tiny native model (CLIP + SigLIP, class A1, LLaMA with head
size 32) against its pruned folder (SigLIP removed), each measured in vLLM's offline engine beside the eager
figures. Checked: every vLLM figure is there and positive for both models (TTFT, request time, decode tokens/s,
requests/s and output tokens/s at each concurrency), the run-time mask is named as not measured, vLLM's accuracy on
the bench data equals the eager path's (same prompts, greedy, same scorers), and bench.md names both engines. No
timed assertions: the figures' values depend on the machine. The bench runs with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (each engine's core and worker in the bench's own process, vLLM imported
once): the same engines, figures and shutdown call, about a minute less start-up on these machines.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import write_tiny_native

BENCH_TIMEOUT = 1200  # eager bench, then two vLLM engine starts (about 80 s each on 2 cores, torch.compile)
CONCURRENCY = [1, 4]


def write_data(folder):
    """Six samples in two categories: four multiple-choice (chosen through the option tokens), two open."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, size=(30 + 5 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        row = {"id": f"q{i}", "image": f"images/{i}.png", "question": "Which colour dominates?",
               "category": "General" if i % 2 else "Colour"}
        if i < 4:
            row.update(options=["red", "green", "blue", "grey"], answer="ABCD"[i], metric="mcq")
        else:
            row.update(answer="red", metric="exact")
        lines.append(json.dumps(row))
    (folder / "bench.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "bench.jsonl"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """``(bench.json, bench.md)`` of ``encslim bench FULL PRUNED --engine vllm --mask siglip --data ...``."""
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("vllm-bench")
    full = write_tiny_native(root / "full", ("clip", "siglip"))
    prune(full, ["siglip"], root / "pruned")
    out = root / "out"
    command = [sys.executable, "-m", "encslim.cli", "bench", str(full), str(root / "pruned"), "--engine", "vllm",
               "--concurrency", ",".join(map(str, CONCURRENCY)), "--data", str(write_data(root / "data")),
               "--out", str(out), "--mask", "siglip", "--batch-sizes", "1", "--max-new-tokens", "4", "--warmup", "1",
               "--min-iters", "3", "--min-seconds", "0", "--no-memory"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT,
                          env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert done.returncode == 0, f"encslim bench --engine vllm failed:\n{done.stderr[-6000:]}"
    assert "vLLM 0.32.0 (offline engine)" in done.stdout
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def positive(summary, rounds):
    return summary["n"] == rounds and summary["min"] > 0 and summary["p50"] > 0


@pytest.mark.slow
def test_bench_json_has_the_vllm_figures_of_each_model(bench_run):
    report, _ = bench_run
    engine = report["engines"]["vllm"]
    assert (engine["engine"], engine["version"], engine["concurrency"]) == ("vllm", "0.32.0", CONCURRENCY)
    assert engine["engine_args"]["enable_prefix_caching"] is False and engine["engine_args"]["dtype"] == "float32"
    assert report["settings"]["engine"] == "vllm" and report["settings"]["concurrency"] == CONCURRENCY
    names = [m["name"] for m in report["models"]]
    assert names == ["full", "pruned", "full[mask siglip]"]
    assert engine["not_measured"] == {"full[mask siglip]": "a run-time mask has no vLLM form"}
    assert report["models"][2]["vllm"] is None
    for model in report["models"][:2]:
        figures = model["vllm"]
        assert figures["engine"] == "vllm 0.32.0" and figures["start_s"] > 0
        assert positive(figures["ttft_ms"], 3) and positive(figures["request_ms"], 3)
        assert positive(figures["decode_tokens_per_s"], 3)
        assert sorted(figures["concurrency"]) == ["1", "4"]
        for level in figures["concurrency"].values():
            assert level["rounds"] == 3 and level["requests_per_s"] > 0 and level["output_tokens_per_s"] > 0
            assert level["output_tokens_per_s"] == pytest.approx(4 * level["requests_per_s"])
        # the eager figures are still there, beside them
        assert model["latency"]["1"]["stages"]["ttft"]["mean"] > 0


@pytest.mark.slow
def test_vllm_accuracy_equals_the_eager_accuracy(bench_run):
    report, _ = bench_run
    for model in report["models"][:2]:
        assert set(model["vllm"]["accuracy"]) == {"overall", "Colour", "General"}
        assert model["vllm"]["accuracy"] == model["accuracy"], model["name"]


@pytest.mark.slow
def test_bench_md_names_the_engines(bench_run):
    report, md = bench_run
    assert f"## Latency, batch size 1 (ms, mean ± std; engine: eager, transformers " \
           f"{report['environment']['transformers']})" in md
    assert "## vLLM: vllm 0.32.0 (offline LLM API, one engine per model, in turn)" in md
    rows = [line for line in md.splitlines() if line.startswith(("| full | vllm 0.32.0 |", "| pruned | vllm 0.32.0 |"))]
    assert len(rows) == 2 and all(len(row.split("|")) == 12 for row in rows)  # 10 columns: req/s @1 and @4
    assert "Not measured in vLLM: full[mask siglip] (a run-time mask has no vLLM form)." in md
    assert "### Accuracy (engine: vllm 0.32.0, greedy)" in md
