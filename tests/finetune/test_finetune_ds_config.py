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


def _clear_distributed_env(monkeypatch):
    """Remove the launcher variables for one test; every one is restored (or removed again) afterwards
    (``monkeypatch.delenv`` alone does not record a variable that is absent, so what the code under test
    sets would outlive the test, and later Trainer runs in this process would read it as a launcher's)."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def test_distributed_env_is_set_only_when_absent(monkeypatch):
    _clear_distributed_env(monkeypatch)
    monkeypatch.setenv("MASTER_PORT", "29999")
    added = ensure_distributed_env()
    assert added == {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    assert ensure_distributed_env() == {}


def test_a_deepspeed_run_sets_the_launcher_variables_for_itself_only(monkeypatch):
    """finetune's single-process DeepSpeed environment is removed when the run ends, even when it fails."""
    import os

    from encslim.finetune.config import FinetuneConfig
    from encslim.finetune.train import _distributed_env

    _clear_distributed_env(monkeypatch)
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    with _distributed_env(FinetuneConfig(deepspeed="zero2")):
        assert {k: os.environ[k] for k in names if k != "MASTER_PORT"} == {
            "MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        assert int(os.environ["MASTER_PORT"]) > 0
    assert not any(k in os.environ for k in names)
    with pytest.raises(RuntimeError, match="training failed"):
        with _distributed_env(FinetuneConfig(deepspeed="zero2")):
            raise RuntimeError("training failed")
    assert not any(k in os.environ for k in names)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher its variables are left as they are
    with _distributed_env(FinetuneConfig(deepspeed="zero2")):
        pass
    assert os.environ["WORLD_SIZE"] == "2"
