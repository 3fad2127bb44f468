"""Output folders get the modes the user's umask gives (as ``mkdir`` and a new file would), whatever wrote them:
:func:`encslim.files.atomic_output_dir` itself, prune and export (both write through it)."""

import os
import shutil
import stat

import pytest

from encslim.files import atomic_output_dir, current_umask

# umask -> (folder mode, file mode)
MODES = {0o022: (0o755, 0o644), 0o077: (0o700, 0o600)}


@pytest.fixture(params=sorted(MODES), ids=lambda m: f"umask{m:03o}")
def umask(request):
    """Run the test under this umask (restored after)."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _modes(folder):
    """{relative path: permission bits} of the folder and everything in it."""
    found = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        found[str(path.relative_to(folder))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_umask_modes(folder, umask):
    dir_mode, file_mode = MODES[umask]
    modes = _modes(folder)
    expected = {name: dir_mode if (folder / name).is_dir() else file_mode for name in modes}
    assert modes == expected
    assert len(modes) > 2  # the folder and some files were checked


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_atomic_output_dir_gives_umask_modes_to_new_and_copied_files(tmp_path, umask):
    """Files written, copied (with a source's mode) and a subfolder all end with the umask's modes; an executable
    file keeps its execute bits as far as the umask allows."""
    source = tmp_path / "source.txt"
    source.write_text("x")
    source.chmod(0o604)  # copied as is by shutil.copy, a mode neither umask would give
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o700)
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700  # mkdtemp's mode while it is being written
        (tmp / "written.json").write_text("{}")
        shutil.copy(source, tmp / "copied.txt")
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "deep.txt").write_text("y")
        shutil.copy(tool, tmp / "tool.sh")
    modes = _modes(out)
    dir_mode, file_mode = MODES[umask]
    assert modes == {".": dir_mode, "written.json": file_mode, "copied.txt": file_mode, "sub": dir_mode,
                     "sub/deep.txt": file_mode, "tool.sh": dir_mode}


def test_prune_output_gets_umask_modes(tiny_model_dir, tmp_path, umask):
    from encslim.prune.surgery import prune

    out = tmp_path / "pruned"
    prune(tiny_model_dir("A1"), ["clip"], out, verify=False)
    _assert_umask_modes(out, umask)
    assert (out / "model.safetensors").is_file() and (out / "encslim_manifest.json").is_file()


def test_export_output_gets_umask_modes(tiny_model_dir, tmp_path, umask):
    from encslim.export import export_hf

    out = tmp_path / "exported"
    export_hf(tiny_model_dir("A1"), out, max_shard_size="100KB")
    _assert_umask_modes(out, umask)
    assert len(list(out.glob("model-*.safetensors"))) > 1  # sharded: several weight files checked
