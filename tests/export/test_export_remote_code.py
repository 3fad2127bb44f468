"""``--format remote-code``: loads with the Auto classes and trust_remote_code=True where encslim is absent."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from encslim.errors import ConfigError

from .conftest import native_logits

VARIANTS = [("A1", ("clip", "siglip", "dinov2")), ("B", ("clip", "sam")), ("C", ("dinov2",))]
# sources carrying a token budget in config.json: the shipped tokens.py reduces as encslim does
BUDGET_VARIANTS = [("A1", ("clip", "siglip"), {"method": "pool", "budget": 0.25}),
                   ("B", ("clip", "sam"), {"method": "attention", "budget": 0.5})]

# Runs with `python -I -S`: no site processing, so encslim's editable-install hook is not loaded;
# only the plain site-packages folder is put on sys.path (torch, transformers, ...).
LOADER = r"""
import json, sys
sys.path.append(sys.argv[1])
try:
    import encslim
except ImportError:
    pass
else:
    sys.exit("encslim is importable in the isolated interpreter")
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image
import numpy as np
results = {}
for folder in sys.argv[2:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    prompts = [processor.build_prompt(q) for q in ("What is in the image?", "How many objects are there?")]
    batch = processor(text=prompts, images=images)
    with torch.no_grad():
        logits = model(**batch).logits
        tokens = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1]:]
    results[folder] = {"model_module": type(model).__module__, "processor_module": type(processor).__module__,
                       "logits": logits.tolist(), "tokens": tokens.tolist(),
                       "image_tokens": int((batch["input_ids"] == model.config.image_token_id).sum())}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def remote_folders(tiny_model_dir, tmp_path_factory):
    from encslim.export import export_remote_code

    root = tmp_path_factory.mktemp("remote")
    folders = {}
    for fusion, encoders in VARIANTS:
        src = tiny_model_dir(fusion=fusion, encoders=encoders)
        out = root / f"{fusion}-{len(encoders)}"
        folders[out] = (src, export_remote_code(src, out))
    for fusion, encoders, budget in BUDGET_VARIANTS:
        src = root / f"src-{fusion}-budget"
        shutil.copytree(tiny_model_dir(fusion=fusion, encoders=encoders), src)
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps(dict(config, token_budget=budget), indent=2))
        out = root / f"{fusion}-{len(encoders)}-budget"
        folders[out] = (src, export_remote_code(src, out))
        assert json.loads((out / "config.json").read_text())["token_budget"] == budget
    return folders


def test_folder_ships_code_and_auto_map(remote_folders):
    from encslim.export.remote_code import flatten_imports
    from encslim.files import sha256_file
    from encslim.models.registry import get_adapter

    code = get_adapter("encslim").remote_code()

    for out, (_, manifest) in remote_folders.items():
        config = json.loads((out / "config.json").read_text())
        assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_encslim.EncslimForConditionalGeneration"
        assert config["auto_map"]["AutoConfig"] == "configuration_encslim.EncslimConfig"
        processor_config = json.loads((out / "processor_config.json").read_text())
        assert processor_config["auto_map"] == {"AutoProcessor": "processing_encslim.EncslimProcessor"}
        assert set(manifest["export"]["code_files"]) == set(code.files) == {
            "configuration_encslim.py", "modeling_encslim.py", "processing_encslim.py", "masking.py", "tokens.py"}
        for name, source in code.files.items():
            shipped = (out / name).read_text()
            # the family's source, only its relative imports flattened to the shipped names
            assert shipped == flatten_imports(source.read_text(), source, code.files)
            assert sha256_file(out / name) == manifest["export"]["code_files"][name]
        modeling = (out / "modeling_encslim.py").read_text()
        assert "from .configuration_encslim import" in modeling and "from .masking import" in modeling
        assert "from .tokens import" in modeling
        assert "from .tokens import" in (out / "processing_encslim.py").read_text()
        assert "from ..." not in modeling
        assert "trust_remote_code=True" in (out / "README.md").read_text()


def test_loads_without_encslim(remote_folders, tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    purelib = sysconfig.get_paths()["purelib"]
    folders = [str(f) for f in remote_folders]
    result = subprocess.run([sys.executable, "-I", "-S", "-c", LOADER, purelib, *folders], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    import numpy as np
    from PIL import Image

    from encslim.models.loading import load_model

    for folder, (src, _) in remote_folders.items():
        got = loaded[str(folder)]
        assert got["model_module"].startswith("transformers_modules.") and got["model_module"].endswith("modeling_encslim")
        assert got["processor_module"].endswith("processing_encslim")
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
        model, processor, adapter = load_model(src)
        assert got["image_tokens"] == 2 * adapter.image_tokens(model.config)
        if "budget" in folder.name:  # the shipped processor wrote the reduced count
            assert adapter.image_tokens(model.config) < model.config.num_image_tokens()
        prompts = [processor.build_prompt(q) for q in ("What is in the image?", "How many objects are there?")]
        batch, expected = native_logits(src, prompts, images)
        assert (torch.tensor(got["logits"]) - expected).abs().max().item() <= 1e-5
        with torch.no_grad():
            tokens = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1]:]
        assert got["tokens"] == tokens.tolist()


def test_foreign_imports_are_detected(tmp_path):
    from encslim.export.remote_code import foreign_imports

    text = ("import os\nimport torch\nfrom encslim.models import tiny\nfrom .helpers import x\n"
            "from .configuration_encslim import EncslimConfig\nfrom ..masking import f\nimport yaml\n")
    assert foreign_imports(text, {"configuration_encslim", "masking"}) == ["encslim.models", ".helpers", "..masking",
                                                                          "yaml"]


def test_non_native_refused(tiny_hybrid_dir, tmp_path):
    from encslim.export import export_remote_code

    with pytest.raises(ConfigError, match="--format remote-code needs a model whose family ships its code"):
        export_remote_code(tiny_hybrid_dir, tmp_path / "out")
