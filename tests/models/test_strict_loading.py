"""Every load refuses weights that do not fit config.json (one line, exit 2), never random weights.

Broken folders (built once per module, copies of the session's tiny models): fusion tensors
deleted, every key prefixed ``model.``, a ``.bin`` that ``torch.load(weights_only=True)``
refuses, a ``.bin`` without the model's tensors, a mis-shaped tensor, and the tiny DeepSeek-VL
hybrid without its aligner. Each goes through ``eval``, ``rank``, ``bench``, ``export --format
hf``, ``inspect`` and ``finetune``. Plus: what transformers legitimately skips (a tied
``lm_head.weight``, non-persistent buffers, the hybrid's ``model.`` prefix it maps itself) still
loads, and ``encslim.register_transformers()`` is the one line before plain transformers.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from ..conftest import make_image, run_main, write_jsonl

FULL = "full"


class NotAWeight:
    """A custom class: a pickle holding it is refused by ``torch.load(weights_only=True)``."""


def _rewrite(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = change(load_file(str(path)))
    save_file(tensors, str(path), metadata={"format": "pt"})


def _copy(src, root, name):
    out = root / name
    shutil.copytree(src, out)
    return out


def _drop_fusion(tensors):
    return {k: v for k, v in tensors.items() if not k.startswith("fusion.")}


def _prefix(tensors):
    return {f"model.{k}": v for k, v in tensors.items()}


def _misshape(tensors):
    import torch

    key = "fusion.projector.0.weight"
    rows, cols = tensors[key].shape
    return dict(tensors, **{key: torch.zeros(rows + 1, cols)})


def _only_bin(folder, payload):
    import torch

    (folder / "model.safetensors").unlink()
    torch.save(payload, folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    """``{case: folder}`` of broken models, plus the good native model (``full``) and what each case must name."""
    import torch
    from safetensors import safe_open

    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid

    good = tiny_model_dir("A1")
    root = tmp_path_factory.mktemp("broken")
    with safe_open(str(good / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    fusion = sorted(k for k in keys if k.startswith("fusion."))
    out = {FULL: (good, [])}

    folder = _copy(good, root, "no-fusion")
    _rewrite(folder, _drop_fusion)
    out["no-fusion"] = (folder, [f"{len(fusion)} missing key(s)", fusion[0]])

    folder = _copy(good, root, "prefixed")
    _rewrite(folder, _prefix)
    out["prefixed"] = (folder, [f"{len(keys)} unexpected key(s)", "model.fusion.", "extra 'model.' prefix"])

    folder = _copy(good, root, "misshaped")
    _rewrite(folder, _misshape)
    out["misshaped"] = (folder, ["1 mis-shaped key(s)", "fusion.projector.0.weight (checkpoint ["])

    folder = _copy(good, root, "garbage-bin")
    _only_bin(folder, {"x": NotAWeight()})
    out["garbage-bin"] = (folder, [f"{folder}/pytorch_model.bin", "weights_only=True", "NotAWeight"])

    folder = _copy(good, root, "foreign-bin")
    _only_bin(folder, {"x": torch.zeros(2)})
    out["foreign-bin"] = (folder, ["missing key(s)", "1 unexpected key(s): x"])

    hybrid = create_tiny_hybrid(root / "hybrid")
    folder = _copy(hybrid, root, "hybrid-no-aligner")
    _rewrite(folder, lambda t: {k: v for k, v in t.items() if ".aligner." not in k})
    out["hybrid-no-aligner"] = (folder, ["6 missing key(s)", "model.aligner."])
    out["hybrid"] = (hybrid, [])
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict-data")
    (root / "images").mkdir()
    items = []
    for i in range(2):
        make_image(i).save(root / "images" / f"{i}.png")
        items.append({"id": f"q{i}", "image": f"images/{i}.png", "category": "General",
                      "question": "What colour is the shape?", "answer": "red"})
    return write_jsonl(root / "bench.jsonl", items)


def _digest(*paths):
    """sha256 of every file under ``paths``."""
    out = {}
    for path in paths:
        for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


COMMANDS = {
    "eval": lambda model, full, data, out: ["eval", model, "--data", data, "--max-new-tokens", "2", "--out", out],
    "rank": lambda model, full, data, out: ["rank", model, "--data", data, "--max-new-tokens", "2", "--out", out],
    "bench": lambda model, full, data, out: ["bench", full, model, "--out", out],
    "export": lambda model, full, data, out: ["export", model, "--format", "hf", "--out", out],
    "inspect": lambda model, full, data, out: ["inspect", model],
    "finetune": lambda model, full, data, out: ["finetune", model, "--data", data, "--max-steps", "1", "--out", out],
}
CASES = ["no-fusion", "prefixed", "misshaped", "garbage-bin", "foreign-bin", "hybrid-no-aligner"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_broken_checkpoint_is_refused_in_one_line(command, case, folders, data, tmp_path, capsys):
    model, expected = folders[case]
    out = tmp_path / "out"
    before = _digest(model, data)
    code, stdout, stderr = run_main(capsys, *COMMANDS[command](model, folders[FULL][0], data, out))
    assert code == 2, (stdout, stderr)
    assert "Traceback" not in stderr and "LOAD REPORT" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr  # after transformers' loading bar, if any
    for fragment in expected:
        assert fragment in errors[0], errors[0]
    assert _digest(model, data) == before
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary one


def test_check_load_report_names_count_keys_and_fix():
    from encslim.errors import ModelLoadError
    from encslim.models.loading import check_load_report

    check_load_report("m", {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(),
                            "error_msgs": []})
    missing = {f"a.{i}.weight" for i in range(5)}
    with pytest.raises(ModelLoadError) as info:
        check_load_report("m", {"missing_keys": missing, "unexpected_keys": {f"model.{k}" for k in missing}})
    message = str(info.value)
    assert "\n" not in message and "5 missing key(s)" in message and "a.0.weight, a.1.weight, a.2.weight (+2 more)" \
        in message and "5 unexpected key(s)" in message and "extra 'model.' prefix" in message


def test_what_transformers_skips_still_loads(tiny_model_dir, folders, tmp_path):
    """A tied ``lm_head.weight`` absent from the file, non-persistent buffers (rotary ``inv_freq``,
    ``position_ids``), and the hybrid's extra ``model.`` prefix (transformers maps it to
    ``base_model_prefix``) are no problems: they load, with the weights of the file."""
    import torch

    from encslim.models.families.native.configuration import EncslimConfig
    from encslim.models.loading import load_model
    from encslim.models.families.native.modeling import EncslimForConditionalGeneration

    config = EncslimConfig.from_pretrained(str(tiny_model_dir("A1")))
    config.text_config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = EncslimForConditionalGeneration(config)
    tied.save_pretrained(tmp_path / "tied")
    shutil.copy(tiny_model_dir("A1") / "processor_config.json", tmp_path / "tied")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir("A1") / name, tmp_path / "tied")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lm_head" in k]
    model, _, _ = load_model(tmp_path / "tied")
    assert torch.equal(model.language_model.lm_head.weight, tied.language_model.model.embed_tokens.weight)
    assert [n for n, _ in model.named_buffers() if n not in model.state_dict()]  # non-persistent ones exist

    hybrid = folders["hybrid"][0]
    prefixed = _copy(hybrid, tmp_path, "hybrid-prefixed")
    _rewrite(prefixed, _prefix)
    reference, _, _ = load_model(hybrid)
    model, _, _ = load_model(prefixed)
    expected = reference.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())


def test_register_transformers_is_the_one_line_before_plain_transformers(tiny_model_dir):
    folder = tiny_model_dir("A1")
    code = textwrap.dedent(f"""
        import json, sys
        import encslim
        assert "torch" not in sys.modules and "transformers" not in sys.modules  # import encslim stays light
        encslim.register_transformers()
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        encslim.register_transformers()  # again, after transformers: harmless
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r})
        processor = AutoProcessor.from_pretrained({str(folder)!r})
        print(json.dumps([type(AutoConfig.from_pretrained({str(folder)!r})).__name__, type(model).__name__,
                          type(processor).__name__]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        "EncslimConfig", "EncslimForConditionalGeneration", "EncslimProcessor"]


def test_readme_and_model_card_show_the_one_line():
    from pathlib import Path

    from encslim.models.families.native.adapter import HOW_TO_LOAD

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "import encslim; encslim.register_transformers()" in readme
    assert "encslim.register_transformers()" in HOW_TO_LOAD and "import encslim.models.families.native.adapter" not in HOW_TO_LOAD
