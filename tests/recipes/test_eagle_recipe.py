"""The shipped Eagle-X5 recipe runs end to end on a tiny X5 (CPU overrides of its GPU settings)."""

import json
import shutil
from pathlib import Path

from ..conftest import make_image, run_main, write_jsonl

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "eagle_x5_prune.yaml"


def test_eagle_recipe_ranks_prunes_exports_and_benches(tiny_eagle_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(8):
        make_image(i, 48).save(images / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                     "answer": "red", "category": "General" if i % 2 else "OCR & Chart", "metric": "exact"})
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    recipe = shutil.copy(RECIPE, tmp_path / RECIPE.name)
    code, out, err = run_main(
        capsys, "run", recipe, f"model={tiny_eagle_dir()}", f"data.eval=[{data}]", "device=cpu", "dtype=float32",
        f"out={tmp_path / 'runs'}", "rank.subsets=single", "rank.max_new_tokens=2", "select.policy=drop",
        "select.drop=[det-1024]", "bench.batch_sizes=[1]", "bench.max_new_tokens=2")
    assert code == 0, err
    run = tmp_path / "runs" / "eagle_x5_prune"
    ranking = json.loads((run / "rank" / "ranking" / "ranking.json").read_text())
    assert ranking["slots"] == ["clip-448", "convnext-1024", "sam-1024", "det-1024", "pix2struct-1024"]
    assert ranking["mask_mode"] == "zero"
    config = json.loads((run / "export" / "hf" / "config.json").read_text())
    assert config["mm_vision_tower"] == "clip-448;convnext-1024;sam-1024;pix2struct-1024"
    assert config["architectures"] == ["EagleVisionLlamaForCausalLM"]
    manifest = json.loads((run / "prune" / "model" / "encslim_manifest.json").read_text())
    assert manifest["verification"]["passed"] is True
    bench = json.loads((run / "bench" / "report" / "bench.json").read_text())
    assert len(bench["models"]) == 2
