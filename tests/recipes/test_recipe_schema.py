"""Recipe schema: shipped recipes validate; typos fail fast with a did-you-mean hint."""

import subprocess
import sys

import pytest

from encslim.errors import ConfigError
from encslim.recipes.schema import apply_overrides, load_recipe, shipped_recipes, validate_recipe


def test_every_shipped_recipe_validates_and_names_its_command():
    recipes = shipped_recipes()
    assert {"demo", "native_4enc_to_2enc", "deepseek_vl_hybrid_drop_sam"} <= set(recipes)
    for name, path in recipes.items():
        recipe = load_recipe(path)
        assert recipe.name == name
        assert path.read_text().splitlines()[0].startswith(f"# encslim run recipes/{name}.yaml")


def test_a_misspelt_key_gets_a_hint_naming_the_right_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: demo\nrank:\n  subsetz: all\nselect:\n  keep: 2\n  categroy: OCR\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "unknown key 'select.categroy' (did you mean 'select.category'?)" in message
    assert "unknown key 'rank.subsetz' (did you mean 'rank.subsets'?)" in message
    path.write_text("name: x\nmodel: demo\nselct:\n  policy: keep\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "unknown key 'selct' (did you mean 'select'?)" in str(err.value)
    assert "missing key 'select'" in str(err.value)  # the prune stage's policy is always stated


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate_recipe({"model": "demo", "rank": {"mask": "half"}, "select": {"policy": "keep"}})
    message = str(err.value)
    assert "missing key 'name'" in message
    assert "rank.mask" in message
    assert "'select': policy 'keep' needs keep: K" in message


def test_export_formats_come_from_the_registry():
    """export.formats accepts every registered format (generic and the families' stock ones) and nothing else."""
    from encslim.models.registry import export_formats

    recipe = validate_recipe({"name": "x", "model": "demo", "select": {"drop": ["clip"]},
                              "export": {"formats": list(export_formats())}})
    assert recipe.export.formats == list(export_formats()) and "deepseek_vl" in recipe.export.formats
    with pytest.raises(ConfigError) as err:
        validate_recipe({"name": "x", "model": "demo", "select": {"drop": ["clip"]},
                         "export": {"formats": ["hf", "deepseek-vl", "gguf"]}})
    message = str(err.value)
    assert "'export.formats': unknown export format(s) 'deepseek-vl' (did you mean 'deepseek_vl'?), 'gguf'; " \
           f"use {', '.join(export_formats())}" in message


def test_overrides_are_parsed_as_yaml(tmp_path):
    data = apply_overrides({"rank": {"subsets": "all"}}, ["rank.subsets=single", "finetune.enabled=false",
                                                          "data.eval=[a.tsv, b.tsv]"])
    assert data == {"rank": {"subsets": "single"}, "finetune": {"enabled": False},
                    "data": {"eval": ["a.tsv", "b.tsv"]}}
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides({}, ["rank.subsets"])


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: ./m\ndata:\n  eval: [e.tsv]\nselect: {keep: 1}\n")
    recipe = load_recipe(path)
    assert recipe.model == str(tmp_path / "m")
    assert recipe.data.eval == [str(tmp_path / "e.tsv")]


def test_cli_typo_fails_fast_without_loading_torch(tmp_path):
    """The acceptance asks for < 2 s: a typo must be caught before torch or any model loads."""
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: demo\nselect: {keep: 1}\nbench:\n  max_new_token: 4\n")
    proc = subprocess.run([sys.executable, "-m", "encslim.cli", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "did you mean 'bench.max_new_tokens'?" in proc.stderr and "Traceback" not in proc.stderr
    code = ("import sys\nfrom encslim.cli import main\ntry:\n    main(['run', sys.argv[1]])\n"
            "except SystemExit as e:\n    assert e.code == 2\nassert 'torch' not in sys.modules")
    check = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_recipes_validate_cli_accepts_the_shipped_ones():
    proc = subprocess.run([sys.executable, "-m", "encslim.cli", "recipes", "validate"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok ") == len(shipped_recipes())
