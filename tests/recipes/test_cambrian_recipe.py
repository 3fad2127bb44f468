"""The shipped Cambrian-8B recipe runs end to end on a tiny Cambrian (CPU overrides of its GPU settings),
with the encoder folders given in the recipe (``encoders:``) instead of ``--encoder``."""

import json
import shutil
from pathlib import Path

from encslim.models.external import CONFIG_KEY

from ..conftest import make_image, run_main, write_jsonl

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cambrian_8b_prune.yaml"


def test_cambrian_recipe_ranks_prunes_exports_and_benches(tiny_cambrian, tmp_path, capsys):
    folder, paths = tiny_cambrian
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(6):
        make_image(i, 48).save(images / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                     "answer": "red", "category": "General" if i % 2 else "OCR & Chart", "metric": "exact"})
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    recipe = shutil.copy(RECIPE, tmp_path / RECIPE.name)
    encoders = [f"encoders.{slot}={path}" for slot, path in paths.items()]
    code, out, err = run_main(
        capsys, "run", recipe, f"model={folder}", f"data.eval=[{data}]", "device=cpu", "dtype=float32", *encoders,
        f"out={tmp_path / 'runs'}", "rank.subsets=single", "rank.max_new_tokens=2", "select.policy=drop",
        "select.drop=[dinov2]", "bench.batch_sizes=[1]", "bench.max_new_tokens=2")
    assert code == 0, err
    run = tmp_path / "runs" / "cambrian_8b_prune"
    ranking = json.loads((run / "rank" / "ranking" / "ranking.json").read_text())
    assert ranking["slots"] == ["siglip", "clip", "dinov2", "convnext"] and ranking["mask_mode"] == "removal"
    manifest = json.loads((run / "prune" / "model" / "encslim_manifest.json").read_text())
    assert manifest["verification"]["passed"] is True
    config = json.loads((run / "export" / "hf" / "config.json").read_text())
    assert config["mm_vision_tower_aux_token_len_list"] == [16, 16, 64]
    assert sorted(config[CONFIG_KEY]) == ["clip", "convnext", "siglip"]
    bench = json.loads((run / "bench" / "report" / "bench.json").read_text())
    assert len(bench["models"]) == 2
