"""A truncated or garbled safetensors shard is refused before any work by every command that opens a model
(``eval``, ``rank``, ``inspect``, ``export``, ``prune``, ``bench``, ``finetune``), in every family (native and
Eagle's original layout here): exit 2, one line naming the file and the fix, no traceback, the input unchanged,
no output folder left behind. ``--encoder`` naming a slot the model does not have (or given to a family that
keeps every encoder in its checkpoint) is a one-line ``ConfigError`` naming the model's slots."""

import json
import shutil
import struct

import pytest

from .conftest import make_image, run_main, write_jsonl
from .test_bad_files import assert_nothing_written, error_line, tree_digest

FIX = "re-download or re-save this file"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return "expected"


def _garble(path):
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8:8 + length] = b"{" + b"x" * (length - 1)  # same length, not JSON
    path.write_bytes(bytes(data))
    return "header is not valid JSON"


DAMAGE = {"truncated": _truncate, "garbled": _garble}


@pytest.fixture(scope="module")
def broken(tiny_model_dir, tiny_eagle_dir, tmp_path_factory):
    """``{(family, damage): (folder, shard, phrase)}``: copies of the tiny native and Eagle models, one shard damaged."""
    root = tmp_path_factory.mktemp("bad-shards")
    sources = {"native": tiny_model_dir("A1"), "eagle": tiny_eagle_dir(("clip-448", "convnext-1024"))}
    out = {}
    for family, source in sources.items():
        for damage, change in DAMAGE.items():
            folder = root / f"{family}-{damage}"
            shutil.copytree(source, folder)
            shard = sorted(folder.glob("*.safetensors"))[-1]
            out[family, damage] = (folder, shard, change(shard))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-shards-data")
    (root / "images").mkdir()
    rows = []
    for i in range(2):
        make_image(i).save(root / "images" / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"images/{i}.png", "category": "General",
                     "question": "What colour is the shape?", "answer": "red"})
    return write_jsonl(root / "bench.jsonl", rows)


COMMANDS = {
    "eval": lambda model, good, data, out: ["eval", model, "--data", data, "--max-new-tokens", "1", "--out", out],
    "rank": lambda model, good, data, out: ["rank", model, "--data", data, "--max-new-tokens", "1", "--out", out],
    "inspect": lambda model, good, data, out: ["inspect", model],
    "export": lambda model, good, data, out: ["export", model, "--format", "hf", "--out", out],
    "prune": lambda model, good, data, out: ["prune", model, "--drop", "SLOT", "--out", out],
    "bench": lambda model, good, data, out: ["bench", good, model, "--out", out, "--no-memory"],
    "finetune": lambda model, good, data, out: ["finetune", "train", model, "--data", data, "--max-steps", "1",
                                                "--out", out],
}
SLOT = {"native": "siglip", "eagle": "convnext-1024"}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("family", ["native", "eagle"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_broken_shard_is_refused_before_any_work(command, family, damage, broken, tiny_model_dir, data, tmp_path,
                                                  capsys):
    folder, shard, phrase = broken[family, damage]
    good = tiny_model_dir("A1")
    out = tmp_path / "out"
    before = tree_digest(folder), tree_digest(good), tree_digest(data.parent)
    args = [SLOT[family] if a == "SLOT" else a for a in COMMANDS[command](folder, good, data, out)]
    code, _, stderr = run_main(capsys, *args)
    line = error_line(code, stderr)
    assert f"{shard} is truncated or corrupt" in line and phrase in line and line.endswith(FIX), line
    assert (tree_digest(folder), tree_digest(good), tree_digest(data.parent)) == before
    assert_nothing_written(out)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_library_load_refuses_a_broken_shard_in_one_line(broken):
    from encslim.errors import ModelLoadError
    from encslim.models.loading import load_model

    folder, shard, _ = broken["native", "truncated"]
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert str(info.value) == (f"{shard} is truncated or corrupt (expected {shard.stat().st_size + 100} bytes, "
                               f"found {shard.stat().st_size}); {FIX}")


def test_encoder_for_a_slot_the_model_lacks_names_its_slots(tiny_cambrian, tmp_path, capsys):
    folder, paths = tiny_cambrian
    args = [a for slot, path in paths.items() for a in ("--encoder", f"{slot}={path}")]
    code, _, stderr = run_main(capsys, "inspect", folder, *args, "--encoder", f"nosuch={tmp_path}")
    line = error_line(code, stderr)
    assert line == (f"error: --encoder names nosuch, which {folder} does not have; its encoder slots are "
                    "siglip, clip, dinov2, convnext"), line


def test_encoder_for_a_family_without_external_encoders_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir("A1")
    out = tmp_path / "out"
    code, _, stderr = run_main(capsys, "prune", folder, "--drop", "siglip", "--out", out,
                               "--encoder", f"siglip={tmp_path}")
    line = error_line(code, stderr)
    assert line == (f"error: --encoder siglip: {folder} is a native model, whose checkpoint holds every "
                    "encoder; drop --encoder"), line
    assert_nothing_written(out)


def test_recipe_encoders_reach_the_model_explicitly(tiny_cambrian):
    """No process-wide encoder state is left: a Cambrian folder opened without ``encoders`` has none, one opened
    with them carries them, and its adapter reads the config with them."""
    from encslim.models import external
    from encslim.models.folder import ModelFolder

    folder, paths = tiny_cambrian
    assert not hasattr(external, "set_encoder_paths") and not hasattr(external, "_PATHS")
    assert ModelFolder.open(folder, weights=False).encoders == {}
    opened = ModelFolder.open(folder, encoders=paths, weights=False)
    assert opened.encoders == paths
    assert opened.adapter.read_config(str(folder)).encoder_paths == paths
    assert json.loads((folder / "config.json").read_text()).get(external.CONFIG_KEY) is None
