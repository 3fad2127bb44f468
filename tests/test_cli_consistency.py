"""CLI consistency and honest summaries: `demo` as a model argument everywhere, "did you mean" for
typos, rank's help, the finetune summary (smoothed losses, samples seen, a warning when the loss
rose), the bench console (every batch size, accuracy, the FLAGGED reason), the recipe summary's
"finetuned"."""

import click
import pytest
from click.testing import CliRunner

from encslim.cli import COMMANDS, MODEL_ARGUMENTS, DemoModelPath, cli
from encslim.demo.assets import demo_model_path
from .conftest import run_main as _main


# ---------------------------------------------------------------------- point 7: demo, typos, help
def test_inspect_demo_works():
    result = CliRunner().invoke(cli, ["inspect", "demo", "--json"])
    assert result.exit_code == 0, result.output
    assert str(demo_model_path()) in result.output and "siglip" in result.output


def test_every_model_argument_accepts_demo():
    ctx = click.Context(cli)
    for path, names in MODEL_ARGUMENTS.items():
        command = cli.get_command(ctx, path.split()[0])
        for sub in path.split()[1:]:
            command = command.commands[sub]
        arguments = {p.name: p for p in command.params}  # arguments, and options such as --distill-from
        assert set(names) <= set(arguments), path
        for name in names:
            assert isinstance(arguments[name].type, DemoModelPath), (path, name)


def test_prune_demo_dry_run(capsys):
    code, stdout, stderr = _main(capsys, "prune", "demo", "--drop", "clip", "--dry-run")
    assert code == 0, stderr
    assert "plan: drop clip" in stdout


def test_a_local_model_folder_called_demo_wins(tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    from encslim.demo.assets import resolve_model_arg

    monkeypatch.chdir(tmp_path)
    assert resolve_model_arg("demo") == str(demo_model_path())
    shutil.copytree(tiny_model_dir(), tmp_path / "demo")
    assert resolve_model_arg("demo") == "demo"
    assert resolve_model_arg("other") == "other"


@pytest.mark.parametrize("typo,expected", [("rnak", "rank"), ("inspcet", "inspect"), ("expotr", "export")])
def test_command_typo_gets_did_you_mean(capsys, typo, expected):
    code, stdout, stderr = _main(capsys, typo)
    assert code == 2
    assert f"No such command '{typo}'. Did you mean '{expected}'?" in stderr


def test_unknown_command_lists_commands(capsys):
    code, _, stderr = _main(capsys, "frobnicate")
    assert code == 2 and "Did you mean" not in stderr and "Commands: bench, create-tiny" in stderr


def test_finetune_subcommand_typo(capsys, tmp_path):
    code, _, stderr = _main(capsys, "finetune", "mrege", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "Did you mean 'merge'?" in stderr


def test_help_lists_every_command_and_mentions_demo():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in COMMANDS)
    assert "encslim inspect demo" in " ".join(result.output.split())


def test_rank_options_have_help_and_name_the_demo_recipe_defaults():
    result = CliRunner().invoke(cli, ["rank", "--help"], terminal_width=200)
    assert result.exit_code == 0
    command = cli.get_command(click.Context(cli), "rank")
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for name in ("batch_size", "max_new_tokens", "device", "dtype"):
        assert options[name].help, name
    text = " ".join(result.output.split())
    assert "demo recipe uses 32" in text and "demo recipe uses 4" in text
    assert "multi-encoder recipes use all" in text  # the recipes say so in their YAML; the default is single


def test_card_calls_ig_the_information_gap():
    from encslim.export.model_card import render_card

    ranking = {"slots": ["a", "b"], "cur": {"a": {"overall": {"value": 0.1}}, "b": {"overall": {"value": 0.0}}},
               "ig": {"overall": 0.1}}
    card = render_card({"name": "m", "format": "hf", "source": "/s", "model_type": "encslim", "slots": [],
                        "removed": ["b"], "ranking": ranking, "how_to_load": "pass"})
    assert "information gap" in card and "information gain" not in card


# ---------------------------------------------------------------------- point 5: finetune summary
def test_smoothed_losses_and_samples_seen():
    from encslim.finetune.config import FinetuneConfig
    from encslim.finetune.train import samples_seen, smoothed_losses

    falling = smoothed_losses([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
                               0.1, 0.1, 0.1])
    assert falling["loss_window"] == 5 and falling["loss_start"] == pytest.approx(2.2)
    assert falling["loss_end"] == pytest.approx(0.1) and not falling["loss_rose"]
    rose = smoothed_losses([0.0006, 0.05, 0.07, 0.0733])
    assert rose["loss_window"] == 1 and rose["loss_rose"]
    assert smoothed_losses([])["loss_start"] is None
    # 20 steps of 8 on 6000 samples saw 160, not 6000
    assert samples_seen(20, FinetuneConfig(max_steps=20, batch_size=8), 1, 6000) == 160
    assert samples_seen(5, FinetuneConfig(max_steps=5, batch_size=4, grad_accum=2), 2, 10) == 80
    # one epoch of 10 samples in batches of 4 is 3 steps but 10 samples
    assert samples_seen(3, FinetuneConfig(batch_size=4), 1, 10) == 10


def _fake_summary(**changes):
    summary = {"steps": 20, "samples": 6000, "samples_seen": 160, "loss_first": 0.0006, "loss_last": 0.0733,
               "loss_start": 0.001, "loss_end": 0.07, "loss_window": 5, "loss_rose": True,
               "parts": {"trainable": 1000, "total": 100000}, "merged": False}
    return {**summary, **changes}


def test_finetune_cli_reports_samples_seen_and_warns_when_the_loss_rose(monkeypatch, tmp_path):
    import encslim.finetune.train as train

    monkeypatch.setattr(train, "finetune", lambda *a, **k: _fake_summary())
    result = CliRunner().invoke(cli, ["finetune", "demo", "--data", str(tmp_path / "t.jsonl"), "--out",
                                      str(tmp_path / "o"), "--max-steps", "20"])
    assert result.exit_code == 0, result.output
    assert "trained 20 steps: 160 samples seen of 6000 in the data" in result.stdout
    assert "on 6000 samples" not in result.stdout
    assert "loss 0.0010 -> 0.0700 (mean of the first/last 5 logged step(s)" in result.stdout
    assert "warning: the loss rose during fine-tuning (0.0010 -> 0.0700" in result.stderr


def test_finetune_cli_no_warning_when_the_loss_fell(monkeypatch, tmp_path):
    import encslim.finetune.train as train

    monkeypatch.setattr(train, "finetune", lambda *a, **k: _fake_summary(loss_start=0.7, loss_end=0.1,
                                                                         loss_rose=False))
    result = CliRunner().invoke(cli, ["finetune", "demo", "--data", str(tmp_path / "t.jsonl"), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "loss rose" not in result.output


def test_finetune_run_summary(tiny_model_dir, tmp_path, capsys):
    """A real two-step run through the console entry point: the summary names samples seen."""
    import json

    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i, colour in enumerate(["red", "blue"] * 3):
        Image.new("RGB", (32, 32), {"red": (220, 20, 20), "blue": (20, 20, 220)}[colour]).save(tmp_path / f"img/{i}.png")
        rows.append({"id": str(i), "image": f"img/{i}.png", "question": "What colour is the square?", "answer": colour})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout, stderr = _main(capsys, "finetune", tiny_model_dir(), "--data", data, "--out", tmp_path / "o",
                                 "--max-steps", 2, "--batch-size", 2)
    assert code == 0, stderr
    assert "trained 2 steps: 4 samples seen of 6 in the data" in stdout
    assert "(mean of the first/last 1 logged step(s)" in stdout
    summary = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert summary["samples_seen"] == 4 and summary["world_size"] == 1


# ---------------------------------------------------------------------- point 5: bench console, recipe summary
def _stages(vision, e2e):
    return {"stages": {"vision": {"mean": vision}, "end_to_end": {"mean": e2e}}}


BENCH = {
    "settings": {"batch_sizes": [1, 4]},
    "models": [
        {"name": "full", "accuracy": {"overall": 0.9}, "latency": {"1": _stages(10.0, 50.0), "4": _stages(30.0, 90.0)}},
        {"name": "pruned", "accuracy": {"overall": 0.88},
         "latency": {"1": _stages(9.0, 49.0), "4": _stages(12.0, 70.0)}},
    ],
    "comparisons": [
        {"model": "pruned", "batch_size": 1, "speedup": {"end_to_end": 1.02}, "flagged": True,
         "reasons": ["vision: overhead-dominated tiny model"], "notes": []},
        {"model": "pruned", "batch_size": 4, "speedup": {"end_to_end": 1.29}, "flagged": False, "reasons": [],
         "notes": []},
    ],
}


def test_bench_console_shows_every_batch_size_accuracy_and_the_flag_reason(monkeypatch, tmp_path):
    import encslim.bench.benchmark as benchmark

    variant = tmp_path / "pruned"
    variant.mkdir()
    seen = {}

    def fake_run_bench(full, variants, out, settings, **kwargs):
        seen["full"] = full
        return BENCH

    monkeypatch.setattr(benchmark, "run_bench", fake_run_bench)
    result = CliRunner().invoke(cli, ["bench", "demo", str(variant), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert str(seen["full"]) == str(demo_model_path())  # opened (a ModelFolder) before the benchmark
    out = result.output
    assert "batch size 1" in out and "batch size 4" in out
    assert "1.29x" in out and "1.02x" in out
    assert "accuracy (overall)" in out and "0.880  (-0.020 vs full)" in out
    assert "FLAGGED pruned (batch 1)" in out and "- vision: overhead-dominated tiny model" in out


def test_bench_console_without_data_says_so():
    from encslim.bench.report import render_console

    report = {**BENCH, "models": [{**m, "accuracy": None} for m in BENCH["models"]]}
    text = render_console(report, "out")
    assert "accuracy (overall)" not in text and "(no accuracy: pass --data)" in text


def test_recipe_summary_calls_the_finetuned_model_finetuned():
    from encslim.recipes.stages import format_summary

    summary = {"run": "r", "kept": ["clip"], "removed": ["siglip"], "variant": "finetuned",
               "accuracy_full": {"overall": 0.9}, "accuracy_variant": {"overall": 0.88},
               "accuracy_retained": {"overall": 0.88 / 0.9},
               "finetune": {"steps": 20, "samples_seen": 320, "loss_start": 0.9, "loss_end": 1.1, "loss_window": 5,
                            "loss_rose": True}, "outputs": {}}
    text = format_summary(summary)
    assert "finetuned" in text and "pruned" not in text
    assert "320 samples seen" in text and "WARNING: the loss rose" in text
