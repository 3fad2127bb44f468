"""``--resume`` only continues from a checkpoint encslim wrote for this output: the sha256 of every checkpoint's
files is recorded as it is saved (``<out>.checkpoints/checkpoint_digests.json``) and checked before anything of
it is unpickled (DeepSpeed loads its states with ``weights_only=False``). A foreign or modified checkpoint is
refused in one line naming it (exit 2), before training, the checkpoint and the output left as they were."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainerCallback

from encslim.errors import ConfigError
from encslim.finetune.saving import DIGEST_FILE, check_checkpoint, folder_digest, record_checkpoint
from encslim.finetune.train import finetune, work_dir

from ..conftest import run_main
from ..test_bad_files import assert_nothing_written, error_line, tree_digest

OPTIONS = dict(max_steps=8, batch_size=4, save_steps=4, seed=1, progress=False)
CLI_OPTIONS = ["--max-steps", "8", "--batch-size", "4", "--save-steps", "4", "--seed", "1"]
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def fake_checkpoint(folder):
    """A DeepSpeed-shaped checkpoint folder (what a foreign one looks like)."""
    (folder / "global_step4").mkdir(parents=True)
    (folder / "latest").write_text("global_step4")
    torch.save({"module": {"w": torch.zeros(2)}}, folder / "global_step4" / "mp_rank_00_model_states.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    return folder


# ---------------------------------------------------------------------------- record / check
def test_record_then_check_accepts_and_every_change_is_refused(tmp_path):
    work = tmp_path / "out.checkpoints"
    folder = fake_checkpoint(work / "checkpoints" / "checkpoint-4")
    record = work / DIGEST_FILE
    digest = record_checkpoint(folder, record)
    assert check_checkpoint(folder, record) == digest
    entry = json.loads(record.read_text())["checkpoints"]["checkpoint-4"]
    assert set(entry["files"]) == {"latest", "trainer_state.json", "global_step4/mp_rank_00_model_states.pt"}
    assert entry["digest"] == folder_digest(entry["files"]) == digest

    states = folder / "global_step4" / "mp_rank_00_model_states.pt"
    original = states.read_bytes()
    states.write_bytes(original + b"\0")
    with pytest.raises(ConfigError, match=r"refusing to resume from .*checkpoint-4: it was modified since encslim "
                                          r"wrote it \(global_step4/mp_rank_00_model_states.pt changed"):
        check_checkpoint(folder, record)
    states.write_bytes(original)
    (folder / "global_step4" / "extra.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"global_step4/extra.pt was added"):
        check_checkpoint(folder, record)
    (folder / "global_step4" / "extra.pt").unlink()
    (folder / "latest").unlink()
    with pytest.raises(ConfigError, match=r"latest is missing"):
        check_checkpoint(folder, record)
    (folder / "latest").write_text("global_step4")
    assert check_checkpoint(folder, record) == digest  # back as it was written


def test_checkpoint_without_a_record_is_refused(tmp_path):
    work = tmp_path / "out.checkpoints"
    folder = fake_checkpoint(work / "checkpoints" / "checkpoint-4")
    with pytest.raises(ConfigError, match=r"refusing to resume from .*checkpoint-4: encslim recorded no digest"):
        check_checkpoint(folder, work / DIGEST_FILE)
    other = fake_checkpoint(work / "checkpoints" / "checkpoint-2")
    record_checkpoint(other, work / DIGEST_FILE)  # a record of another checkpoint says nothing about this one
    with pytest.raises(ConfigError, match="recorded no digest of it"):
        check_checkpoint(folder, work / DIGEST_FILE)


def test_record_drops_rotated_checkpoints_and_a_broken_record_is_named(tmp_path):
    import shutil

    work = tmp_path / "out.checkpoints"
    first = fake_checkpoint(work / "checkpoints" / "checkpoint-2")
    record_checkpoint(first, work / DIGEST_FILE)
    second = fake_checkpoint(work / "checkpoints" / "checkpoint-4")
    shutil.rmtree(first)  # the Trainer rotates old checkpoints away before its on_save
    record_checkpoint(second, work / DIGEST_FILE)
    assert list(json.loads((work / DIGEST_FILE).read_text())["checkpoints"]) == ["checkpoint-4"]
    (work / DIGEST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=rf"{DIGEST_FILE} is not valid JSON .*; delete .*out.checkpoints"):
        check_checkpoint(second, work / DIGEST_FILE)


# ---------------------------------------------------------------------------- through the CLI
class Interrupt(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_cli_deepspeed_resume_refuses_a_foreign_checkpoint_before_training(tiny_model_dir, ft_data, tmp_path,
                                                                           capsys):
    out = tmp_path / "out"
    folder = fake_checkpoint(work_dir(out) / "checkpoints" / "checkpoint-4")
    before = tree_digest(work_dir(out))
    code, _, err = run_main(capsys, "finetune", tiny_model_dir("A1"), "--data", ft_data, "--out", out,
                            "--deepspeed", "zero2", "--resume", *CLI_OPTIONS)
    line = error_line(code, err)
    assert f"refusing to resume from {folder}: encslim recorded no digest of it" in line, line
    assert f"delete {work_dir(out)} to start over" in line
    assert tree_digest(work_dir(out)) == before
    assert_nothing_written(out)


def test_cli_resume_refuses_a_modified_checkpoint(tiny_model_dir, ft_data, tmp_path, capsys):
    model, out = tiny_model_dir("A1"), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        finetune(model, ft_data, out, callbacks=[Interrupt(6)], **OPTIONS)
    folder = work_dir(out) / "checkpoints" / "checkpoint-4"
    record = json.loads((work_dir(out) / DIGEST_FILE).read_text())
    assert list(record["checkpoints"]) == ["checkpoint-4"]
    assert "trainer_state.json" in record["checkpoints"]["checkpoint-4"]["files"]
    state = folder / "trainer_state.json"
    state.write_text(state.read_text() + " ")
    before = tree_digest(work_dir(out))
    code, _, err = run_main(capsys, "finetune", model, "--data", ft_data, "--out", out, "--resume", *CLI_OPTIONS)
    line = error_line(code, err)
    assert f"refusing to resume from {folder}: it was modified since encslim wrote it (trainer_state.json changed" \
        in line, line
    assert tree_digest(work_dir(out)) == before
    assert_nothing_written(out)


# ---------------------------------------------------------------------------- a real DeepSpeed run
INTERRUPTED_DS_RUN = textwrap.dedent("""
    import sys
    from transformers import TrainerCallback
    from encslim.finetune.train import finetune

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise KeyboardInterrupt("simulated interruption")

    model, data, out = sys.argv[1:]
    try:
        finetune(model, data, out, deepspeed="zero2", callbacks=[Interrupt()], max_steps=8, batch_size=4,
                 save_steps=4, seed=1, progress=False)
    except KeyboardInterrupt:
        sys.exit(3)
""")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # encslim sets them itself
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_deepspeed_checkpoints_are_recorded_resumed_and_refused_once_changed(tiny_model_dir, ft_data, tmp_path):
    model, out = tiny_model_dir("A1"), tmp_path / "z2"
    run = subprocess.run([sys.executable, "-c", INTERRUPTED_DS_RUN, str(model), str(ft_data), str(out)], env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 3, run.stderr[-3000:]
    files = json.loads((work_dir(out) / DIGEST_FILE).read_text())["checkpoints"]["checkpoint-4"]["files"]
    states = [name for name in files if name.startswith("global_step4/") and name.endswith(".pt")]
    assert states, files  # DeepSpeed's own (pickled) states are covered
    saved = tmp_path / "saved.checkpoints"
    import shutil

    shutil.copytree(work_dir(out), saved)

    target = work_dir(out) / "checkpoints" / "checkpoint-4" / states[0]
    target.write_bytes(target.read_bytes() + b"\0")
    cmd = [sys.executable, "-m", "encslim.cli", "finetune", str(model), "--data", str(ft_data), "--out", str(out),
           "--deepspeed", "zero2", "--resume", *CLI_OPTIONS]
    refused = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"it was modified since encslim wrote it ({states[0]} changed" in refused.stderr
    assert not out.exists()

    shutil.rmtree(work_dir(out))
    shutil.copytree(saved, work_dir(out))  # as encslim wrote it: the resume goes through
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "finetune.json").read_text())["steps"] == 8
