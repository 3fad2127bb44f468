"""Recovery-aware ranking (encslim.recipes.recover): rank --recover on the shipped demo model, and
prune --min-retained --on recovered deciding on what it wrote."""

import json

import pytest

from encslim.errors import PlanError
from encslim.recipes.recover import candidates
from encslim.prune.select import select
from ..conftest import make_image, run_main, write_jsonl

SLOTS = ["a", "b", "c"]


def _row(kept, overall, pareto, recovered=None):
    row = {"kept": kept, "masked": [s for s in SLOTS if s not in kept], "accuracy": {"overall": overall, "x": overall},
           "pareto": pareto}
    if recovered is not None:
        row["recovered"] = {"overall": recovered, "x": recovered}
    return row


def _ranking(rows):
    return {"slots": SLOTS, "categories": ["x"], "accuracy": {"full": {"overall": 0.9, "x": 0.9}}, "subsets": rows,
            "cur": {}}


def test_candidates_take_the_best_pareto_row_of_each_size_first():
    ranking = _ranking([_row(SLOTS, 0.9, True), _row(["a", "b"], 0.85, True), _row(["b", "c"], 0.88, True),
                        _row(["a", "c"], 0.89, False), _row(["a"], 0.5, True), _row(["b"], 0.6, False),
                        _row([], 0.1, True)])
    # full and empty sets are never candidates; non-Pareto rows neither
    assert candidates(ranking, 5) == [["b", "c"], ["a"], ["a", "b"]]
    assert candidates(ranking, 2) == [["b", "c"], ["a"]]
    # nothing proper on the frontier (everything ties with the empty set): every proper row is a candidate
    flat = _ranking([_row(SLOTS, 0.0, False), _row(["a", "b"], 0.0, False), _row(["c"], 0.0, False),
                     _row([], 0.0, True)])
    assert candidates(flat, 3) == [["c"], ["a", "b"]]


def test_min_retained_on_recovered_decides_on_the_recovered_rows():
    rows = [_row(SLOTS, 0.9, True), _row(["a", "b"], 0.88, True, recovered=0.89), _row(["a"], 0.6, True, recovered=0.87),
            _row(["b"], 0.7, True)]
    ranking = _ranking(rows)
    masked = select(SLOTS, ranking=ranking, min_retained=0.95)
    recovered = select(SLOTS, ranking=ranking, min_retained=0.95, on="recovered")
    assert masked.kept == ["a", "b"]  # 'a' alone keeps 67 % masked
    assert recovered.kept == ["a"] and recovered.basis == "recovered"  # 0.87 / 0.9 = 96.7 % after recovery
    assert recovered.details["retained"] == pytest.approx(0.87 / 0.9, abs=1e-4)
    assert "after recovery" in recovered.reason


def test_on_recovered_without_recovered_rows_is_refused():
    ranking = _ranking([_row(SLOTS, 0.9, True), _row(["a"], 0.9, True)])
    with pytest.raises(PlanError, match="no recovered accuracy; rerun `encslim rank` with --recover"):
        select(SLOTS, ranking=ranking, min_retained=0.9, on="recovered")


# ---------------------------------------------------------------------------- the demo, end to end
@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from encslim.demo.data import write_demo_data

    folder = tmp_path_factory.mktemp("recover") / "data"
    write_demo_data(folder, seed=0, n_train=64, n_eval=48)
    return folder


RANK = ["rank", "demo", "--subsets", "all", "--batch-size", "32", "--max-new-tokens", "4", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def recovered(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rank") / "ranking"
    args = [*RANK, "--data", demo_data / "eval.jsonl", "--out", out, "--recover", "4", "--recover-top", "2",
            "--recover-distill", "both", "--recover-data", demo_data / "train.jsonl", "--recover-batch-size", "16"]
    from click.testing import CliRunner

    from encslim.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return out, args, result


def test_rank_recover_writes_recovered_accuracy_for_each_frontier_candidate(recovered):
    out, _, result = recovered
    assert result.exit_code == 0, result.output
    data = json.loads((out / "ranking.json").read_text())
    block = data["recovery"]
    expected = candidates(data, 2)
    assert [c["kept"] for c in block["candidates"]] == expected and len(expected) == 2
    assert block["variants"] == ["lora", "distill"] and block["primary"] == "distill"
    groups = ["overall", *data["categories"]]
    rows = {tuple(r["kept"]): r for r in data["subsets"]}
    for entry in block["candidates"]:
        row = rows[tuple(entry["kept"])]
        assert entry["accuracy_masked"] == row["accuracy"]
        assert row["recovered"] == entry["accuracy_recovered"]["distill"]
        for variant in ("lora", "distill"):
            acc = entry["accuracy_recovered"][variant]
            assert sorted(acc) == sorted(groups) and all(0 <= v <= 1 for v in acc.values())
            assert (out / entry["models"][variant] / "config.json").is_file()  # the recovered, merged model
            full = data["accuracy"]["full"]["overall"]
            assert entry["cur_recovered"][variant]["overall"] == pytest.approx((full - acc["overall"]) / full)
        folder = out / "recover" / "+".join(entry["kept"])
        assert (folder / "result.json").is_file() and not (folder / "pruned").exists()
    # the most accurate frontier candidate removes one slot: its recovered CUR is reported per slot
    single = [c for c in block["candidates"] if len(c["masked"]) == 1]
    assert single and data["recovered_cur"][single[0]["masked"][0]] == single[0]["cur_recovered"]["distill"]
    assert "## Accuracy (%) after recovery" in (out / "ranking.md").read_text()
    assert "after 4 recovery steps" in result.output and "distill" in result.output


def test_rank_recover_resumes_done_candidates(recovered):
    from click.testing import CliRunner

    from encslim.cli import cli

    out, args, first = recovered
    before = json.loads((out / "ranking.json").read_text())["recovery"]["candidates"]
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--overwrite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = json.loads((out / "ranking.json").read_text())["recovery"]["candidates"]
    assert result.output.count("reused (done before with the same settings)") == 2
    assert [c["accuracy_recovered"] for c in after] == [c["accuracy_recovered"] for c in before]
    assert all(c["reused"] for c in after)


def test_prune_on_recovered_selects_from_the_recovered_rows(recovered, capsys, tmp_path):
    out, _, _ = recovered
    data = json.loads((out / "ranking.json").read_text())
    full = data["accuracy"]["full"]["overall"]
    entries = data["recovery"]["candidates"]
    fraction = min(c["accuracy_recovered"]["distill"]["overall"] for c in entries) / full - 1e-6
    smallest = min(entries, key=lambda c: (len(c["kept"]), -c["accuracy_recovered"]["distill"]["overall"]))
    code, stdout, err = run_main(capsys, "prune", "demo", "--ranking", out, "--min-retained", f"{fraction:.6f}",
                                 "--on", "recovered", "--out", tmp_path / "pruned", "--no-verify")
    assert code == 0, err
    assert f"selected: drop {', '.join(smallest['masked'])} (the smallest kept set with accuracy after recovery" in stdout
    manifest = json.loads((tmp_path / "pruned" / "encslim_manifest.json").read_text())
    assert manifest["ranking"]["kept"] == smallest["kept"] and manifest["ranking"]["details"]["on"] == "recovered"


def test_recover_input_errors_are_one_line(demo_data, capsys, tmp_path):
    base = [*RANK, "--data", demo_data / "eval.jsonl", "--out", tmp_path / "r"]
    cases = [
        ([*base, "--recover", "2"], "error: --recover needs --recover-data TRAIN_FILE"),
        ([*base, "--recover", "2", "--recover-data", demo_data / "eval.jsonl"], "is also ranking data"),
        ([*base, "--recover", "2", "--recover-data", tmp_path / "missing.jsonl"], "does not exist"),
        ([*base, "--recover-top", "2"], "--recover-top only work with --recover STEPS"),
    ]
    copy = tmp_path / "copy-of-eval.jsonl"  # the ranking data under another name: the same samples
    copy.write_bytes((demo_data / "eval.jsonl").read_bytes())
    broken = tmp_path / "broken-train.jsonl"  # a row that is not JSON
    broken.write_text((demo_data / "train.jsonl").read_text() + "{not json\n")
    cases += [
        ([*base, "--recover", "2", "--recover-data", copy], f"the same content as {demo_data / 'eval.jsonl'}"),
        ([*base, "--recover", "2", "--recover-data", broken], str(broken)),
    ]
    for args, message in cases:
        code, _, err = run_main(capsys, *args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 or "--recover-top" in message, err  # a usage error shows usage
    assert not (tmp_path / "r").exists()  # refused before the ranking (or its plots) is written


def test_recover_refuses_a_distributed_run(demo_data, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_main(capsys, *RANK, "--data", demo_data / "eval.jsonl", "--out", tmp_path / "r", "--recover",
                            "2", "--recover-data", demo_data / "train.jsonl")
    assert code == 2 and "error: --recover runs in one process" in err and not (tmp_path / "r").exists()


def test_prune_on_recovered_without_recovery_is_one_line(demo_data, capsys, tmp_path):
    code, _, _ = run_main(capsys, *RANK, "--data", demo_data / "eval.jsonl", "--out", tmp_path / "r", "--subsets",
                          "pairs", "--bootstrap", "0")
    assert code == 0
    code, _, err = run_main(capsys, "prune", "demo", "--ranking", tmp_path / "r", "--min-retained", "0.9", "--on",
                            "recovered", "--out", tmp_path / "p")
    assert code == 2 and err.strip().startswith("error: the ranking has no recovered accuracy")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_a_candidate_the_family_cannot_remove_is_skipped_with_its_reason(tmp_path):
    """DeepSeek-VL hybrid: keeping SAM alone (removing siglip) is refused by its removal plan; the
    recovery reports that candidate as skipped and recovers the other (siglip alone)."""
    from encslim.data.load import load_samples
    from encslim.models.families.deepseek_vl_hybrid.plan import SIGLIP_REFUSAL
    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid
    from encslim.recipes.recover import RecoverConfig, recover

    full = create_tiny_hybrid(tmp_path / "hybrid")
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):
        make_image(i, 48).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                     "answer": "red", "category": "General", "metric": "exact"})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    samples = load_samples([train])
    accuracy = {"overall": 0.5, "General": 0.5}
    ranking = {"slots": ["siglip", "sam"], "categories": ["General"], "accuracy": {"full": accuracy},
               "subsets": [{"kept": ["siglip", "sam"], "masked": [], "accuracy": accuracy, "pareto": True},
                           {"kept": ["siglip"], "masked": ["sam"], "accuracy": accuracy, "pareto": True},
                           {"kept": ["sam"], "masked": ["siglip"], "accuracy": accuracy, "pareto": True}]}
    out = tmp_path / "ranking"
    out.mkdir()
    block = recover(ranking, full, samples, out, RecoverConfig(steps=1, data=[train], top=2, batch_size=2),
                    {"batch_size": 4, "max_new_tokens": 2})
    by_kept = {tuple(c["kept"]): c for c in block["candidates"]}
    assert by_kept[("sam",)]["skipped"] == SIGLIP_REFUSAL and not (out / "recover" / "sam").exists()
    assert set(by_kept[("siglip",)]["accuracy_recovered"]["lora"]) == {"overall", "General"}
    assert "recovered" in ranking["subsets"][1] and "recovered" not in ranking["subsets"][2]
    assert list(ranking["recovered_cur"]) == ["sam"]  # the single removal that was recovered
    from encslim.prune.rank_report import _recovery_lines

    assert any("skipped: removing 'siglip'" in line for line in _recovery_lines(ranking, ["General", "overall"]))
