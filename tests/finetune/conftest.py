"""Fine-tuning fixtures: small colour-square data sets written as JSONL / LLaVA JSON with PNG images, and
:func:`run_logged`, which runs a command in a fresh process and turns a hang into a failure that shows its output."""

import json
import os
import random
import signal
import subprocess

import pytest

# A DeepSpeed run of these tests takes 20-40 s on 2 idle cores and compiles nothing (on the CPU DeepSpeed runs torch's
# optimizer and collectives); the limit leaves room for busy cores and still ends a hung run (a wait on a build lock,
# a collective that never completes) as a failure with its last output, not a silent stall.
SUBPROCESS_TIMEOUT = 360
OUTPUT_TAIL = 3000

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def square_image(colour, size=64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([size // 6, size // 6, size - size // 6, size - size // 6], fill=COLOURS[colour])
    return image


def write_jsonl(folder, n=24, seed=0, answers=True, name="train.jsonl"):
    """Write ``n`` colour questions with PNG images to ``folder``; return the JSONL path."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            colour = rng.choice(sorted(COLOURS))
            square_image(colour).save(folder / "images" / f"{i}.png")
            row = {"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the square?",
                   "category": "General"}
            if answers:
                row["answer"] = colour
            f.write(json.dumps(row) + "\n")
    return path


def make_samples(n=8, seed=0):
    """``Sample`` objects built directly (no reader)."""
    from encslim.data.samples import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        out.append(Sample(id=f"s{i}", question="What colour is the square?", answers=[colour],
                          image=square_image(colour), category="General", source=f"mem:{i}"))
    return out


@pytest.fixture(scope="session")
def ft_data(tmp_path_factory):
    """A JSONL training file of 24 colour questions (read-only)."""
    return write_jsonl(tmp_path_factory.mktemp("ftdata"))


@pytest.fixture
def samples():
    return make_samples()


@pytest.fixture
def sample_factory():
    """``sample_factory(n=8, seed=0)`` -> list of ``Sample`` with PIL images."""
    return make_samples


@pytest.fixture
def jsonl_writer():
    """``jsonl_writer(folder, n=24, seed=0, answers=True)`` -> path of a JSONL file with images."""
    return write_jsonl


def run_logged(cmd, env=None, timeout=SUBPROCESS_TIMEOUT):
    """Run ``cmd`` (text output captured) and return its ``CompletedProcess``.

    The command runs in its own process group; past ``timeout`` seconds (or when the test is interrupted) the whole
    group is killed (torchrun's workers too), and on a timeout the test fails with the command and the last
    ``OUTPUT_TAIL`` characters of its stdout and stderr.
    """
    import pytest

    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s and was killed; its last output:\n"
                    f"--- stdout ---\n{out[-OUTPUT_TAIL:]}\n--- stderr ---\n{err[-OUTPUT_TAIL:]}", pytrace=False)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
