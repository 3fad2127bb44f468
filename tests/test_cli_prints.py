"""What the CLI prints: no third-party log lines from libraries a command does not use, one loss
warning per run in its place, readable wide numbers, one-line errors, no progress bars without a terminal."""

import importlib.util
import logging
import os
import subprocess
import sys

import pytest

from encslim.models.inspect import format_inspection


def _slot(name, params, flops, share):
    return {"name": name, "backbone": "siglip_vision_model", "image_size": 384, "tokens": 576,
            "feature_shape": [576, 1152], "params": params, "vision_flops": flops, "vision_flops_share": share,
            "vision_flops_method": "measured", "removal_exact": False}


def test_inspect_table_keeps_wide_numbers_apart():
    """Cambrian's encoders: 128,210,816 params next to 741,479,546,880 FLOPs ran together as one figure."""
    info = {"path": "cambrian", "model_type": "cambrian_llama",
            "fusion": {"type": "sva", "class": "C", "image_tokens": 576, "shared_params": 1_000},
            "slots": [_slot("clip", 128_210_816, 741_479_546_880, 0.391),
                      _slot("dinov2_vitl14_reg", 1_136_480_768, 1_154_000_000_000, 0.609)],
            "llm": {"model_type": "llama", "params": 7_000_000_000}, "params_total": 8_300_000_000,
            "params_match": True}
    lines = format_inspection(info).splitlines()
    header, clip, dino = lines[3], lines[4], lines[5]
    assert clip.split() == ["clip", "siglip_vision_model", "384", "576", "1152", "128,210,816", "741,479,546,880",
                            "39.1%", "no", "(finetune", "after", "removal)"]
    assert dino.split()[5:8] == ["1,136,480,768", "1,154,000,000,000", "60.9%"]
    # right-aligned numbers end where their header ends
    for title in ("params", "vision FLOPs", "share"):
        end = header.index(title) + len(title)
        assert clip[end - 1] != " " and clip[end] == " " and dino[end - 1] != " ", title


def _encslim(*args, timeout=300):
    """``(returncode, stdout, stderr)`` of the console entry point in a child process, stdout/stderr pipes."""
    done = subprocess.run([sys.executable, "-c", "import sys; from encslim.cli import main; sys.exit(main())",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ENCSLIM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    return done.returncode, done.stdout, done.stderr


deepspeed_installed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                         reason="DeepSpeed is not installed: nothing imports it")


@deepspeed_installed
def test_create_tiny_and_export_print_no_deepspeed_line(tmp_path):
    """accelerate imports DeepSpeed while saving; its "Setting accelerator to CPU" went to stdout."""
    code, out, err = _encslim("create-tiny", tmp_path / "m")
    assert code == 0, out + err
    assert out == f"wrote {tmp_path / 'm'}\n" and "DeepSpeed" not in err and "accelerator" not in err
    code, out, err = _encslim("export", tmp_path / "m", "--out", tmp_path / "e")
    assert code == 0, out + err
    assert "accelerator" not in out + err and "[WARNING]" not in out + err, out + err
    assert out.startswith(f"exported {tmp_path / 'm'} -> {tmp_path / 'e'} (format hf)\n")


def test_deepspeed_lines_hidden_until_a_run_uses_deepspeed():
    from encslim.runtime import DEEPSPEED_LOGGER, deepspeed_in_use, quiet_deepspeed

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger, handler = logging.getLogger(DEEPSPEED_LOGGER), Keep()
    logger.addHandler(handler)
    try:
        quiet_deepspeed()
        quiet_deepspeed()  # twice is once
        logger.warning("Setting accelerator to CPU.")
        logger.error("a real failure")
        deepspeed_in_use()
        logger.warning("now shown")
    finally:
        logger.removeHandler(handler)
        deepspeed_in_use()
    assert records == ["a real failure", "now shown"]


BAR_MARKS = ("%|", "it/s", "s/it", "step/s", "s/step", "\r")


def test_demo_model_writes_no_progress_bar_into_a_log(tmp_path):
    """Without a terminal (``encslim demo model OUT > log 2>&1``) the training bar stays off, as in every command."""
    code, out, err = _encslim("demo", "model", tmp_path / "dm", "--encoder-steps", "2", "--steps", "2",
                              "--n-eval", "4", "--threads", "1")
    assert code == 0, out + err
    assert not any(mark in out + err for mark in BAR_MARKS), (out + err)[-2000:]
    assert "demo model" not in err and out.startswith(f"wrote {tmp_path / 'dm'} in ")
    assert "accelerator" not in out + err  # saving imports DeepSpeed too


PERF_PATHS = [
    ("prune_speed", ["--workdir", "{missing}"], "argument --workdir: no folder {missing}"),
    ("demo_saving", ["--model", "{missing}"], "argument --model: no folder {missing}"),
    ("family_rank", ["--model", "{missing}"], "argument --model: no folder {missing}"),
    ("onnx_speed", ["--model", "{missing}"], "argument --model: no folder {missing}"),
    ("rank_speed", ["--model", "{missing}"], "argument --model: no folder {missing}"),
    ("eval_speed", ["--json", "{missing}/out.json"], "argument --json: no folder {missing} to write out.json into"),
    ("finetune_speed", ["--json", "{missing}/out.json"],
     "argument --json: no folder {missing} to write out.json into"),
    ("prune_speed", ["--modes", "fast"], "--modes takes threads, sequential"),
]


@pytest.mark.parametrize("script,args,message", PERF_PATHS, ids=[f"{s}{a[0]}" for s, a, _ in PERF_PATHS])
def test_bench_perf_scripts_refuse_missing_paths_in_one_line(tmp_path, script, args, message):
    missing = tmp_path / "no" / "such"
    done = subprocess.run([sys.executable, "-m", f"encslim.bench.perf.{script}",
                           *[a.format(missing=missing) for a in args]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"{script}: error: {message.format(missing=missing)} (--help for usage)\n"
    assert not missing.exists()


def test_rank_recover_prints_each_runs_smoothed_loss_once_on_its_line(tmp_path):
    """The loss line of each recovered variant gives the run's smoothed figures (as its finetune.json), and a
    loss that rose is said on that line, not in a separate log line with other figures."""
    import json

    from encslim.demo.data import write_demo_data

    write_demo_data(tmp_path / "d", seed=0, n_train=16, n_eval=16)
    out = tmp_path / "ranking"
    code, stdout, stderr = _encslim(
        "rank", "demo", "--data", tmp_path / "d" / "eval.jsonl", "--out", out, "--subsets", "single",
        "--bootstrap", "0", "--batch-size", "16", "--max-new-tokens", "2", "--recover", "4", "--recover-top", "1",
        "--recover-distill", "both", "--recover-data", tmp_path / "d" / "train.jsonl", "--recover-batch-size", "4",
        timeout=600)
    assert code == 0, stdout + stderr
    assert "loss rose during" not in stdout + stderr  # the finetune library no longer logs its own warning
    entry = json.loads((out / "ranking.json").read_text())["recovery"]["candidates"][0]
    for variant, folder in entry["models"].items():
        summary = json.loads((out / folder / "finetune.json").read_text())
        line = next(line for line in stdout.splitlines() if line.startswith(f"  {variant}: ") and " steps," in line)
        expected = (f"  {variant}: {summary['steps']} steps, loss {summary['loss_start']:.4f} -> "
                    f"{summary['loss_end']:.4f} (mean of the first/last {summary['loss_window']} steps)")
        assert line == expected + ("  WARNING: the loss rose" if summary["loss_rose"] else "")
        assert stdout.count(f"  {variant}: {summary['steps']} steps,") == 1
