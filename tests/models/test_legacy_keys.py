"""Checkpoints saved by older transformers open, prune and verify under the current (5.x) key names.

Also: ``ModelFolder`` reads transformers 4.x's ``.bin`` headers, once per file version per process (the
I-MoF ``.bin`` folder's ``inspect`` and ``eval`` each load every shard's header once).

A family declares the key spellings older releases saved (``Family.legacy_keys``: ``(old prefix, new
prefix)``); ``ModelFolder`` applies them when it reads the headers, so the strict key check, the plan,
the executor (streaming and in memory) and the module-local check see transformers 5.x's names, and
the output is written in 5.x's layout. The folder used is the DeepSeek-VL hybrid transformers 4.54
saved (``tests/parity/deepseek_vl_hybrid/hybrid/model``: SigLIP as ``model.vision_model.vision_model.*``).
Its declared pair is checked against transformers' own renaming on load (its conversion mapping).
"""

import json
import shutil
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encslim.errors import ModelLoadError
from encslim.models.folder import Checkpoint, ModelFolder
from encslim.models.registry import Family

SAVED_454 = Path(__file__).parents[1] / "parity" / "deepseek_vl_hybrid" / "hybrid" / "model"
IMOF_BIN = Path(__file__).parents[1] / "parity" / "imof" / "model"
OLD, NEW = "model.vision_model.vision_model.", "model.vision_model."


def _stored_keys():
    return list(load_file(str(SAVED_454 / "model.safetensors")))


def test_headers_are_read_under_the_current_names():
    folder = ModelFolder.open(SAVED_454)
    stored = _stored_keys()
    assert sum(k.startswith(OLD) for k in stored) == 48
    assert folder.family.legacy_keys == ((OLD, NEW),)
    assert set(folder.weights.renamed) == {k for k in stored if k.startswith(OLD)}
    assert set(folder.weights.tensors) == {NEW + k[len(OLD):] if k.startswith(OLD) else k for k in stored}
    info = folder.weights.tensors[NEW + "post_layernorm.weight"]
    assert info.key == NEW + "post_layernorm.weight" and info.file.name == "model.safetensors"
    assert folder.weights.current_name(OLD + "post_layernorm.weight") == NEW + "post_layernorm.weight"
    assert folder.weights.current_name("lm_head.weight") == "lm_head.weight"


def test_the_declared_spelling_is_what_transformers_converts_on_load():
    """transformers 5.x's conversion mapping for the model (built on the meta device) renames every stored
    key exactly as the family's ``legacy_keys`` do, and the result is the model's state dict."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(SAVED_454))
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expected = model.state_dict()
    checkpoint = ModelFolder.open(SAVED_454).weights
    theirs = {k: rename_source_key(k, renamings, converters, model.base_model_prefix, expected)[0]
              for k in _stored_keys()}
    assert theirs == {k: checkpoint.current_name(k) for k in theirs}
    assert set(theirs.values()) == set(expected) == set(checkpoint.tensors)


def _pruned(out):
    return {k: v for k, v in load_file(str(out / "model.safetensors")).items()}


def test_in_memory_and_bin_sources_give_the_streaming_output(tmp_path):
    """The in-memory executor (with full verification) and a ``.bin`` copy of the 4.54 folder write the
    same tensors, under the same current names, as the streaming executor on the safetensors folder."""
    from encslim.prune.surgery import prune  # encslim.prune is the package once a test imported encslim.prune.*

    streamed = prune(str(SAVED_454), ["sam"], str(tmp_path / "streamed"), verify_method="module-local",
                     streaming=True)
    in_memory = prune(str(SAVED_454), ["sam"], str(tmp_path / "in-memory"), verify_method="full",
                      streaming=False)
    assert streamed["legacy_keys"] == in_memory["legacy_keys"]
    assert in_memory["legacy_keys"]["prefixes"] == [[OLD, NEW]]
    assert "transformers 5.x's layout" in in_memory["legacy_keys"]["note"]
    as_bin = tmp_path / "as-bin"
    shutil.copytree(SAVED_454, as_bin)
    torch.save(load_file(str(as_bin / "model.safetensors")), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    folder = ModelFolder.open(as_bin)
    assert folder.weights.format == "bin" and len(folder.weights.renamed) == 48
    assert "pytorch_model.bin" not in folder.other_files
    from_bin = prune(folder, ["sam"], str(tmp_path / "from-bin"), verify_method="module-local")
    assert from_bin["verification"]["passed"] is True and from_bin["left_out"] == []
    reference = _pruned(tmp_path / "streamed")
    assert not any(k.startswith(OLD) for k in reference) and sum(k.startswith(NEW) for k in reference) == 48
    for name in ("in-memory", "from-bin"):
        other = _pruned(tmp_path / name)
        assert list(other) == list(reference), name
        assert all(torch.equal(other[k], reference[k]) for k in reference), name


def test_both_spellings_of_one_tensor_are_refused(tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(SAVED_454, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[NEW + "post_layernorm.weight"] = tensors[OLD + "post_layernorm.weight"].clone()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"tensor 'model\.vision_model\.post_layernorm\.weight' is stored "
                       r"twice \(also as 'model\.vision_model\.vision_model\.post_layernorm\.weight'\)"):
        ModelFolder.open(folder)


def test_without_declared_spellings_keys_stay_as_stored():
    checkpoint = Checkpoint.open(SAVED_454)
    assert checkpoint.renamed == {} and set(checkpoint.tensors) == set(_stored_keys())


@pytest.mark.parametrize("pair", [("a.",), ("a.", "a."), ("", "b."), ("a.", 3)])
def test_a_family_declares_old_new_prefix_pairs(pair):
    with pytest.raises(ValueError, match="not an \\(old, new\\) prefix pair"):
        Family(name="legacy_test", description="x", adapters={"legacy_test": "m:a"}, legacy_keys=(pair,))


@pytest.fixture
def bin_reads(monkeypatch):
    """``{file name: loads}`` of every ``.bin`` header load from here on (the process's memo emptied)."""
    import encslim.models.bin_header as bin_header

    reads, real = Counter(), bin_header.read_bin_header

    def counted(path, size):
        reads[Path(path).name] += 1
        return real(path, size)

    monkeypatch.setattr(bin_header, "read_bin_header", counted)
    monkeypatch.setattr(bin_header, "_READ", OrderedDict())
    return reads


def test_inspect_of_a_bin_folder_loads_each_header_once(bin_reads, capsys):
    from encslim.cli import main

    try:
        main(["inspect", str(IMOF_BIN), "--json"])
    except SystemExit as exit_:
        assert not exit_.code
    info = json.loads(capsys.readouterr().out)
    assert info["params_match"] and [s["name"] for s in info["slots"]] == ["clip", "dinov2"]
    assert bin_reads == {f"pytorch_model-0000{i}-of-00003.bin": 1 for i in (1, 2, 3)}
    folder = ModelFolder.open(IMOF_BIN)
    assert folder.weights.format == "bin" and len(folder.weights.files) == 3
    assert not any(n.endswith(".bin") or n.endswith(".bin.index.json") for n in folder.other_files)
    assert bin_reads == {f"pytorch_model-0000{i}-of-00003.bin": 1 for i in (1, 2, 3)}


def test_a_rewritten_bin_is_read_again(bin_reads, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(SAVED_454, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(str(SAVED_454 / "model.safetensors"))
    torch.save(tensors, folder / "pytorch_model.bin")
    assert len(ModelFolder.open(folder).weights.tensors) == len(tensors)
    assert len(ModelFolder.open(folder).weights.tensors) == len(tensors) and bin_reads["pytorch_model.bin"] == 1
    del tensors["lm_head.weight"]
    torch.save(tensors, folder / "pytorch_model.bin")
    assert "lm_head.weight" not in ModelFolder.open(folder, weights=True).weights.tensors
    assert bin_reads["pytorch_model.bin"] == 2
