"""Exports keep what older readers need: the slow tokenizer's files and transformers 4.4x's RoPE keys."""

import json

import pytest

from ..conftest import run_main, sentencepiece_eagle
from encslim.export.compat import legacy_rope_keys

def test_rope_keys_beside_rope_parameters():
    llama3 = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = {"model_type": "eagle_llama", "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
              "text_config": {"rope_parameters": llama3}, "vision_config": {"hidden_size": 8}}
    out = legacy_rope_keys(config)
    assert out["rope_theta"] == 10000.0 and out["rope_scaling"] is None
    assert out["text_config"]["rope_theta"] == 500000.0
    assert out["text_config"]["rope_scaling"] == {"rope_type": "llama3", "type": "llama3", "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}
    assert out["vision_config"] == {"hidden_size": 8}
    assert out["text_config"]["rope_parameters"] == llama3  # transformers 5's spelling stays
    kept = {"rope_parameters": {"rope_theta": 1.0}, "rope_theta": 2.0, "rope_scaling": {"type": "linear"}}
    assert legacy_rope_keys(kept) == kept  # what a config already says is never overwritten


@pytest.fixture(scope="module")
def spm_eagle_theta(tiny_eagle_dir, tmp_path_factory):
    """A tiny Eagle with a SentencePiece tokenizer.model only (as NVEagle folders ship it) and a
    Llama-3 RoPE theta (Eagle X4-8B-Plus: 500000)."""
    folder = sentencepiece_eagle(tiny_eagle_dir(("clip-448", "sam-1024")), tmp_path_factory.mktemp("compat") / "eagle")
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 500000.0
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_hf_export_carries_tokenizer_model_and_rope_theta(spm_eagle_theta, tmp_path, capsys):
    out = tmp_path / "hf"
    code, _, err = run_main(capsys, "export", spm_eagle_theta, "--format", "hf", "--out", out)
    assert code == 0, err
    assert (out / "tokenizer.model").read_bytes() == (spm_eagle_theta / "tokenizer.model").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 500000.0
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"] is None  # what transformers 4.4x reads
    manifest = json.loads((out / "encslim_manifest.json").read_text())
    assert manifest["export"]["carried_tokenizer_files"] == ["tokenizer.model"]
    card = (out / "README.md").read_text()
    assert "Eagle v1" in card and "native encslim" not in card  # the card names the family
