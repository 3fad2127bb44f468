"""The runner's bookkeeping: stage hashes, skipping unchanged stages, atomic stage folders."""

import json

import pytest

from encslim.recipes import runner, stages


def _counting_specs(calls, fail_in=None):
    """Stage specs that write one file each and count their runs."""
    def make(name, after):
        def run(ctx, tmp):
            calls.append(name)
            if name == fail_in:
                raise KeyboardInterrupt
            (tmp / "out.txt").write_text(f"{name} {ctx.recipe.rank.subsets}")
            return {"file": str(tmp / "out.txt")}

        settings = (lambda r: {"subsets": r.rank.subsets}) if name == "rank" else (lambda r: {})
        return stages.StageSpec(enabled=lambda r: True, after=after, settings=settings, inputs=lambda ctx: [],
                                run=run)

    return {"data": make("data", ()), "rank": make("rank", ("data",)), "prune": make("prune", ("rank",)),
            "finetune": make("finetune", ("prune",)), "export": make("export", ("finetune",)),
            "bench": make("bench", ("export",))}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: demo\nout: {tmp_path / 'runs'}\nselect: {{min_retained: 0.95}}\n")
    return path


def test_rerun_skips_unchanged_and_reruns_downstream_of_a_change(recipe, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(stages, "SPECS", _counting_specs(calls))
    monkeypatch.setattr(stages, "summarize", lambda ctx: {})
    runner.run_recipe(recipe)
    assert calls == list(runner.STAGES)
    calls.clear()
    runner.run_recipe(recipe)
    assert calls == []
    runner.run_recipe(recipe, overrides=["rank.subsets=all"])  # the default is single
    assert calls == ["rank", "prune", "finetune", "export", "bench"]
    record = json.loads((tmp_path / "runs" / "t" / "rank" / "stage.json").read_text())
    assert record["settings"] == {"subsets": "all"}
    assert (tmp_path / "runs" / "t" / "rank" / "out.txt").read_text() == "rank all"
    assert (tmp_path / "runs" / "t" / "recipe.resolved.yaml").is_file()


def test_interrupt_leaves_finished_stages_intact(recipe, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(stages, "SPECS", _counting_specs(calls, fail_in="finetune"))
    monkeypatch.setattr(stages, "summarize", lambda ctx: {})
    with pytest.raises(KeyboardInterrupt):
        runner.run_recipe(recipe)
    run_dir = tmp_path / "runs" / "t"
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "data", "prune", "rank", "recipe.resolved.yaml"]
    assert not any(p.name.startswith(".finetune") for p in run_dir.iterdir())
    calls.clear()
    monkeypatch.setattr(stages, "SPECS", _counting_specs(calls))
    runner.run_recipe(recipe)
    assert calls == ["finetune", "export", "bench"]


def test_force_and_stage_selection(recipe, monkeypatch):
    calls = []
    monkeypatch.setattr(stages, "SPECS", _counting_specs(calls))
    monkeypatch.setattr(stages, "summarize", lambda ctx: {})
    runner.run_recipe(recipe)
    calls.clear()
    runner.run_recipe(recipe, stages=["prune"], force=True)
    assert calls == ["prune"]


def test_stage_selection_stops_after_the_last_selected_stage(recipe, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(stages, "SPECS", _counting_specs(calls))
    monkeypatch.setattr(stages, "summarize", lambda ctx: {})
    run_dir = tmp_path / "runs" / "t"
    with pytest.raises(runner.ConfigError, match="stage 'data' has not run yet .* and 'rank' needs it"):
        runner.run_recipe(recipe, stages=["rank"])
    assert calls == [] and not (tmp_path / "runs").exists()  # refused before anything is written
    runner.run_recipe(recipe, stages=["data"])
    runner.run_recipe(recipe, stages=["rank"])
    assert calls == ["data", "rank"]  # the later stages are left alone, not refused
    assert not (run_dir / "prune").exists()
