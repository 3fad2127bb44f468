"""DeepSpeed JSON files: the shipped ones load, bad ones fail in one line, the single-process environment."""

import json

import pytest

from encslim.errors import ConfigError
from encslim.finetune.ds_config import GATHER_KEY, ensure_distributed_env, load_deepspeed_config, shipped_config


def test_shipped_configs_load_with_auto_values():
    for name, stage in (("zero2", 2), ("zero3", 3)):
        path = shipped_config(name)
        assert path.parent.name == "deepspeed" and path.parent.parent.name == "recipes"
        data = load_deepspeed_config(str(path))
        assert data["zero_optimization"]["stage"] == stage
        assert data["train_micro_batch_size_per_gpu"] == "auto" and data["optimizer"]["params"]["lr"] == "auto"
        assert load_deepspeed_config(name) == data
    assert load_deepspeed_config("zero3")["zero_optimization"][GATHER_KEY] is True


def _write(tmp_path, text):
    path = tmp_path / "ds.json"
    path.write_text(text)
    return path


def test_bad_files_raise_one_line_errors(tmp_path):
    cases = [
        ('{"zero_optimization": {"stage": 2,}}', "is not valid JSON (line 1"),
        ("[1, 2]", "must hold a JSON object, not a list"),
        ('{"zero_optimisation": {"stage": 2}}', "unknown key 'zero_optimisation' (did you mean 'zero_optimization'?)"),
        ('{"zero_optimization": {"stage": 3, "overlap_com": true}}',
         "unknown key 'zero_optimization.overlap_com' (did you mean 'zero_optimization.overlap_comm'?)"),
        ('{"zero_optimization": {"stage": 5}}', "stage must be 0, 1, 2 or 3"),
        ('{"zero_optimization": {"stage": 3, "%s": false}}' % GATHER_KEY, "would save empty placeholder weights"),
    ]
    for text, phrase in cases:
        with pytest.raises(ConfigError) as err:
            load_deepspeed_config(_write(tmp_path, text))
        assert phrase in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_deepspeed_config(tmp_path / "missing.json")


def test_zero3_gather_is_switched_on_without_touching_the_file(tmp_path):
    text = json.dumps({"zero_optimization": {"stage": 3}})
    path = _write(tmp_path, text)
    assert load_deepspeed_config(path)["zero_optimization"][GATHER_KEY] is True
    assert path.read_text() == text


def test_distributed_env_is_set_only_when_absent(monkeypatch):
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_PORT", "29999")
    added = ensure_distributed_env()
    assert added == {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    assert ensure_distributed_env() == {}
