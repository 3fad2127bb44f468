"""Progress on long work: with a pseudo-terminal as stderr ``encslim rank`` and the recipe runner
draw tqdm bars; without one the output is line-based and carries no bar."""

import os
import subprocess
import sys
import threading

import pytest

BAR_MARKS = ("eval/s", "s/eval", "%|")


def _run(args, tty, env=None, timeout=240):
    """``(returncode, stdout, stderr)`` of ``python args``; stderr a pseudo-terminal when ``tty``."""
    env = {**os.environ, "COLUMNS": "100", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if not tty:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
        return done.returncode, done.stdout, done.stderr
    import pty

    master, slave = pty.openpty()
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=slave, text=True, env=env)
        os.close(slave)
        out, _ = proc.communicate(timeout=timeout)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    from encslim.demo.data import write_demo_data

    out = tmp_path_factory.mktemp("progress") / "demo"
    write_demo_data(out, seed=1, n_train=4, n_eval=16)
    return out / "eval.jsonl"


def _rank_args(model, data, out):
    return ["-c", "import sys; from encslim.cli import main; sys.exit(main())", "rank", str(model), "--data",
            str(data), "--out", str(out), "--subsets", "pairs", "--bootstrap", "0", "--batch-size", "2"]


def test_rank_shows_a_bar_on_a_terminal_and_none_without(tiny_model_dir, small_eval, tmp_path):
    model = tiny_model_dir()
    code, out, err = _run(_rank_args(model, small_eval, tmp_path / "tty"), tty=True, env={"ENCSLIM_THREADS": "1"})
    assert code == 0, out + err
    assert "evaluate" in err and any(mark in err for mark in BAR_MARKS), err[-2000:]
    assert "\r" in err  # a bar redraws its line

    code, out, err = _run(_rank_args(model, small_eval, tmp_path / "pipe"), tty=False, env={"ENCSLIM_THREADS": "1"})
    assert code == 0, out + err
    assert not any(mark in err for mark in BAR_MARKS) and "\r" not in err and "\r" not in out
    assert "wrote" in out and len(out.splitlines()) < 20  # short and line-based

    import json

    threads = json.loads((tmp_path / "pipe" / "ranking.json").read_text())["evaluation"]["threads"]
    assert threads["threads"] == 1 and threads["source"] == "ENCSLIM_THREADS"


RUNNER_SCRIPT = """
import sys, time
from encslim.recipes import runner, stages
from encslim.runtime import progress_bar

def make(name, after):
    def run(ctx, tmp):
        for _ in progress_bar(range(4), desc=name + " work", mininterval=0):
            time.sleep(0.02)
        (tmp / "out.txt").write_text(name)
        return {"file": str(tmp / "out.txt")}
    return stages.StageSpec(enabled=lambda r: name != "export", after=after, settings=lambda r: {},
                            inputs=lambda ctx: [], run=run)

names = list(runner.STAGES)
stages.SPECS = {n: make(n, tuple(names[:i][-1:])) for i, n in enumerate(names)}
stages.summarize = lambda ctx: {}
runner.run_recipe(sys.argv[1], threads=1)
"""


def test_recipe_runner_names_stage_and_position(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nmodel: demo\nout: {tmp_path / 'runs'}\nselect:\n  min_retained: 0.95\n")
    code, out, err = _run(["-c", RUNNER_SCRIPT, str(recipe)], tty=True)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("[1/5 data] running") and "[3/5 prune] done in" in out and "[5/5 bench]" in out
    assert "export" not in out  # disabled: not counted
    assert "rank work" in err and "%|" in err

    code, out, err = _run(["-c", RUNNER_SCRIPT, str(recipe)], tty=False)  # rerun: every stage unchanged
    assert code == 0, out + err
    assert out.splitlines() == [f"[{k}/5 {s}] unchanged, skipped" for k, s in
                                enumerate(["data", "rank", "prune", "finetune", "bench"], start=1)]
    assert "%|" not in err and "\r" not in err
