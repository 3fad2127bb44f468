"""transformers 4.3x Llama checkpoints store each layer's ``rotary_emb.inv_freq``: every Llama-based family of
original checkpoints (I-MoF, Eagle, Cambrian) loads them (not an error; named in the load's log) and still
refuses any other unexpected key."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import encslim
from encslim.errors import ModelLoadError
from encslim.models.registry import families, resolve


@pytest.fixture(scope="module", params=["imof", "eagle", "cambrian"])
def tiny(request, tmp_path_factory):
    """``(folder, encoders)`` of the family's tiny model (Cambrian's encoders live outside its checkpoint)."""
    out = tmp_path_factory.mktemp(request.param) / "tiny"
    resolve(families()[request.param].tiny)(out, seed=0)
    encoders = {p.name: str(p) for p in (out / "encoders").iterdir()} if (out / "encoders").is_dir() else None
    return out, encoders


def _with_key(tiny, tmp_path, key):
    folder = tmp_path / "edited"
    shutil.copytree(tiny[0], folder)
    index = folder / "model.safetensors.index.json"
    name = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    path = folder / (sorted(set(name.values()))[0] if name else "model.safetensors")
    state = load_file(str(path))
    state[key] = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    save_file(state, str(path), metadata={"format": "pt"})
    if name:
        index.write_text(json.dumps({"metadata": {}, "weight_map": {**name, key: path.name}}))
    return folder


def test_inv_freq_is_tolerated_and_named(tiny, tmp_path, caplog):
    key = "model.layers.0.self_attn.rotary_emb.inv_freq"
    folder = _with_key(tiny, tmp_path, key)
    with caplog.at_level(logging.INFO, logger="encslim.models.layout"):
        model, _, _ = encslim.load_model(str(folder), encoders=tiny[1])
    assert key not in model.state_dict()
    assert any("1 checkpoint key(s) tolerated" in r.getMessage() and key in r.getMessage() for r in caplog.records)


def test_other_unexpected_key_is_still_refused(tiny, tmp_path):
    key = "model.layers.0.self_attn.rotary_emb.other"
    with pytest.raises(ModelLoadError, match=r"1 unexpected key\(s\): model\.layers\.0\.self_attn\.rotary_emb\.other"):
        encslim.load_model(str(_with_key(tiny, tmp_path, key)), encoders=tiny[1])
