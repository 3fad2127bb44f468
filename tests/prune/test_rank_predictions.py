"""``encslim rank --predictions``: rankings from prediction files, and the clustered bootstrap."""

import csv
import json

import numpy as np
import pytest

from ..conftest import make_image, run_main
from encslim.prune.config import RankConfig
from encslim.prune.importance import bootstrap_unit, bootstrap_weights, cur_table
from encslim.prune.rank import load_ranking, rank
from encslim.prune.rank_compute import compute_ranking, image_clusters

SLOTS = ("clip", "siglip", "dinov2")


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    from encslim.demo.data import write_demo_data

    out = tmp_path_factory.mktemp("preddata") / "demo"
    write_demo_data(out, seed=1, n_train=4, n_eval=16)
    return out / "eval.jsonl"


def _key(masked):
    return "full" if not masked else "masked:" + "+".join(s for s in SLOTS if s in masked)


def _write_vlmeval_tsv(path, samples, predictions, drop=()):
    """A VLMEvalKit prediction TSV (``{model}_{dataset}.tsv``), written with csv quoting: generated text may
    hold tabs or newlines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["index", "question", "answer", "A", "B", "C", "D", "category", "metric", "prediction"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        for s in samples:
            if s.id in drop:
                continue
            answer = s.answers[0] if len(s.answers) == 1 else str(list(s.answers))
            writer.writerow([s.id, s.question, answer, *(s.options.get(k, "") for k in "ABCD"), s.category,
                             s.metric, predictions[s.id]])
    return path


@pytest.fixture(scope="module")
def per_mask_predictions(tiny_model_dir, demo_eval):
    """The tiny model's own answers under every mask set, from the evaluator (as rank evaluates them:
    the no-encoder set with the zero mask)."""
    from encslim.bench.evaluate import EvalSettings, evaluate
    from encslim.data.load import load_samples
    from encslim.models.loading import load_model
    from encslim.prune.subsets import mask_sets

    loaded = load_model(tiny_model_dir())
    samples = load_samples(demo_eval)
    everything = frozenset(SLOTS)
    sets = mask_sets(list(SLOTS), "all")
    normal = evaluate(loaded, samples, mask_sets=[m for m in sets if m != everything],
                      settings=EvalSettings(max_new_tokens=4))
    blind = evaluate(loaded, samples, mask_sets=[everything], settings=EvalSettings("zero", max_new_tokens=4))
    predictions = {**normal.predictions, **blind.predictions}
    return samples, predictions


def _write_all(root, samples, predictions, drop=None):
    args = []
    for masked, preds in predictions.items():
        key = _key(masked)
        folder = root / key.replace(":", "_").replace("+", "-")
        _write_vlmeval_tsv(folder / "tiny_eval.tsv", samples, preds, drop=(drop or {}).get(key, ()))
        args += ["--predictions", f"{key}={folder}"]
    return args


def test_predictions_reproduce_a_model_run(tiny_model_dir, demo_eval, per_mask_predictions, tmp_path, capsys):
    direct = rank(tiny_model_dir(), demo_eval, subsets="all", bootstrap=200, max_new_tokens=4).data
    samples, predictions = per_mask_predictions
    args = _write_all(tmp_path / "preds", samples, predictions)
    out = tmp_path / "from-preds"
    code, stdout, err = run_main(capsys, "rank", *args, "--out", out, "--bootstrap", "200")
    assert code == 0, err
    assert "No --model: costs unknown" in stdout
    data = load_ranking(out)
    assert data["slots"] == list(SLOTS) and data["source"] == "predictions"
    assert data["categories"] == direct["categories"] and data["n_samples"] == direct["n_samples"]
    for slot in SLOTS:
        for group, cell in direct["cur"][slot].items():
            mine = data["cur"][slot][group]
            assert mine["value"] == cell["value"] and mine["ci"] == cell["ci"], (slot, group)
            assert mine["flips"] == cell["flips"]
    assert data["ig"] == direct["ig"]
    assert data["accuracy"] == direct["accuracy"]
    accuracy = {tuple(r["kept"]): r["accuracy"] for r in data["subsets"]}
    assert accuracy == {tuple(r["kept"]): r["accuracy"] for r in direct["subsets"]} and len(accuracy) == 8
    assert data["shapley_method"] == direct["shapley_method"] == "exact"
    assert data["shapley"] == direct["shapley"] and data["interactions"] == direct["interactions"]
    assert data["bootstrap"]["unit"] == direct["bootstrap"]["unit"] == "sample"
    assert data["bootstrap"]["clusters"] == 16
    assert all(c == {"vision_flops": None, "params": None} for c in data["costs"].values())
    assert "parameters) are unknown" in (out / "ranking.md").read_text()

    # with the model: its slots and costs; with --data: the benchmark decides answers, metric, images
    code, stdout, err = run_main(capsys, "rank", *args, "--model", tiny_model_dir(), "--data", demo_eval,
                                 "--out", tmp_path / "with-model", "--bootstrap", "200", "--json")
    assert code == 0, err
    again = json.loads(stdout)
    assert again["costs"] == direct["costs"] and again["subsets"] == direct["subsets"]
    assert again["cur"] == direct["cur"]


def test_mismatched_indices_exit_2_naming_them(per_mask_predictions, tmp_path, capsys):
    samples, predictions = per_mask_predictions
    dropped = [s.id for s in samples[2:9]]
    args = _write_all(tmp_path / "preds", samples, predictions, drop={"masked:siglip": dropped})
    code, _, err = run_main(capsys, "rank", *args, "--out", tmp_path / "o")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "masked:siglip" in err and "lack 7 sample(s)" in err
    assert ", ".join(dropped[:5]) in err and "and 2 more" in err
    assert not (tmp_path / "o").exists()

    code, _, err = run_main(capsys, "rank", "--predictions", f"masked:clip={tmp_path / 'p2'}", "--out", tmp_path / "o")
    assert code == 2 and "needs full=PATH" in err


def _lmms_rows(responses):
    """Hand-written lmms-eval ``--log_samples`` rows: two open questions on one image, an MCQ, one more."""
    docs = [
        {"question": "What colour?", "category": "colour", "image_id": "img1"},
        {"question": "Which shape?", "category": "shape", "image_id": "img1"},
        {"question": "Pick the colour.", "category": "colour", "A": "red", "B": "blue", "image_id": "img2"},
        {"question": "How many?", "category": "shape", "image_id": "img3"},
    ]
    targets = ["red", "circle", "B", "3"]
    return [{"doc_id": i, "doc": d, "target": t, "arguments": [], "resps": [[r]], "filtered_resps": [r],
             "exact_match": 0.0}
            for i, (d, t, r) in enumerate(zip(docs, targets, responses))]


def test_lmms_eval_samples_round_trip(tmp_path, capsys):
    answers = {"full": ["Red", "circle.", "(B) blue", "3"],          # 4 right
               "masked:a": ["blue", "circle", "A", "three"],          # circle, three -> 3: 2 right
               "masked:b": ["red", "square", "B", "3"],               # 3 right
               "masked:a+b": ["no", "no", "A", "no"]}
    args = []
    for key, responses in answers.items():
        folder = tmp_path / key.replace(":", "_").replace("+", "-")
        folder.mkdir()
        (folder / "samples_mytask.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _lmms_rows(responses)), encoding="utf-8")
        args += ["--predictions", f"{key}={folder / 'samples_mytask.jsonl'}"]
    code, stdout, err = run_main(capsys, "rank", *args, "--out", tmp_path / "o", "--bootstrap", "100", "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["slots"] == ["a", "b"] and data["categories"] == ["colour", "shape"]
    assert data["accuracy"]["full"] == {"overall": 1.0, "colour": 1.0, "shape": 1.0}
    assert data["cur"]["a"]["overall"]["value"] == pytest.approx(0.5)
    assert data["cur"]["b"]["overall"]["value"] == pytest.approx(0.25)
    assert data["cur"]["a"]["colour"]["value"] == pytest.approx(1.0)
    assert data["ig"]["overall"] == pytest.approx(0.25)
    assert data["shapley_method"] == "exact"
    # img1's two questions are in different categories, and clusters are formed within a category
    assert data["bootstrap"]["unit"] == "sample"
    assert data["bootstrap"]["clusters"] == 4


def test_vlmeval_shared_image_paths_cluster(tmp_path, capsys):
    header = ["index", "question", "answer", "category", "image_path", "prediction"]
    rights = {"full": [1] * 8, "masked:x": [1, 0, 1, 0, 1, 1, 0, 1], "masked:y": [1, 1, 0, 1, 1, 1, 1, 0]}
    args = []
    for key, right in rights.items():
        path = tmp_path / f"{key.replace(':', '_')}_TextVQA_VAL.tsv"
        rows = [[i, "q?", "yes", "c", f"img{i // 2}.png", "yes" if r else "no"] for i, r in enumerate(right)]
        path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
        args += ["--predictions", f"{key}={path}"]
    code, stdout, err = run_main(capsys, "rank", *args, "--out", tmp_path / "o", "--json", "--bootstrap", "300")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["bootstrap"]["unit"] == "image" and data["bootstrap"]["clusters"] == 4
    assert data["cur"]["x"]["overall"]["value"] == pytest.approx(3 / 8)


def test_xlsx_predictions_equal_the_tsv_ones(tmp_path, capsys):
    """VLMEvalKit writes {model}_{dataset}.xlsx; read with openpyxl (in the test extra, encslim[vlmeval])."""
    openpyxl = pytest.importorskip("openpyxl")
    header = ["index", "question", "answer", "category", "prediction"]
    rights = {"full": [1, 1, 1, 0, 1, 1], "masked:x": [1, 0, 1, 0, 0, 1], "masked:y": [1, 1, 0, 0, 1, 1]}
    results = {}
    for ext in ("tsv", "xlsx"):
        args = []
        for key, right in rights.items():
            rows = [[i, "q?", "yes", "c" if i % 2 else "d", "yes" if r else "no"] for i, r in enumerate(right)]
            path = tmp_path / f"{key.replace(':', '_')}_TextVQA_VAL.{ext}"
            if ext == "tsv":
                path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
            else:
                book = openpyxl.Workbook()
                for row in [header, *rows]:
                    book.active.append(row)
                book.save(path)
            args += ["--predictions", f"{key}={path}"]
        code, stdout, err = run_main(capsys, "rank", *args, "--out", tmp_path / ext, "--json", "--bootstrap", "50")
        assert code == 0, err
        data = json.loads(stdout)
        results[ext] = (data["cur"], data["ig"], data["subsets"])
    assert results["xlsx"] == results["tsv"]
    assert results["tsv"][0]["x"]["overall"]["value"] == pytest.approx((5 - 3) / 5)


# ---------------------------------------------------------------- the clustered bootstrap
def _scores(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.random(n) < 0.8).astype(float), (rng.random(n) < 0.5).astype(float)


def test_one_question_per_image_equals_the_row_bootstrap():
    categories = np.array(["a", "b", "a", "c", "b", "a"] * 5)
    unique = [f"img{i}" for i in range(categories.size)]
    assert np.array_equal(bootstrap_weights(categories, 300, 7, clusters=unique), bootstrap_weights(categories, 300, 7))
    assert bootstrap_unit(categories, unique) == ("sample", categories.size)
    full, masked = _scores(categories.size, 1)
    rows = cur_table(full, {"s": masked}, categories, n_boot=300, seed=7)
    assert cur_table(full, {"s": masked}, categories, n_boot=300, seed=7, clusters=unique) == rows
    data = compute_ranking(["s"], categories, {frozenset(): full, frozenset({"s"}): masked}, {"s": {}},
                           RankConfig(bootstrap=300, seed=7), clusters=unique)
    assert data["cur"] == rows and data["bootstrap"]["unit"] == "sample" and data["bootstrap"]["clusters"] == 30


def test_duplicated_images_resample_images_deterministically():
    n = 40
    categories = np.array(["a", "b"] * (n // 2))
    clusters = [f"img{i // 4}" for i in range(n)]  # 4 questions per image, 2 per category
    full, masked = _scores(n, 3)
    masked[:8] = 0.0  # two whole images lost together: correlated within a cluster
    scores = {frozenset(): full, frozenset({"s"}): masked}

    def run(clusters):
        return compute_ranking(["s"], categories, scores, {"s": {}}, RankConfig(bootstrap=500, seed=0),
                               clusters=clusters)

    rows, images, again = run(None), run(clusters), run(clusters)
    assert images["bootstrap"]["unit"] == "image" and images["bootstrap"]["clusters"] == 20
    assert rows["bootstrap"]["unit"] == "sample" and rows["bootstrap"]["clusters"] == n
    assert images["cur"] == again["cur"]  # same seed, same interval
    assert images["cur"]["s"]["overall"]["value"] == rows["cur"]["s"]["overall"]["value"]
    wide = images["cur"]["s"]["overall"]["ci"]
    narrow = rows["cur"]["s"]["overall"]["ci"]
    assert wide != narrow and wide[1] - wide[0] > narrow[1] - narrow[0]
    w = bootstrap_weights(categories, 50, 0, clusters)
    for k in range(0, n, 4):  # a cluster's questions of one category move together
        assert np.array_equal(w[:, k], w[:, k + 2]) and np.array_equal(w[:, k + 1], w[:, k + 3])


def test_image_clusters_by_identity_and_bytes():
    from encslim.data.samples import Sample

    shared, copy, other = make_image(1), make_image(1), make_image(2)
    samples = [Sample(id=str(i), question="q", answers=["a"], image=im)
               for i, im in enumerate([shared, shared, copy, other, None, None])]
    ids = image_clusters(samples)
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[4] != ids[5] and len(set(ids)) == 4


def test_evaluation_options_are_refused_with_predictions(tmp_path, capsys):
    """--subsets, --batch-size ... choose how the model is run; with prediction files they would be ignored."""
    code, _, err = run_main(capsys, "rank", "--predictions", f"full={tmp_path}", "--predictions",
                            f"masked:a={tmp_path}", "--subsets", "all", "--max-new-tokens", "4", "--out", tmp_path / "o")
    assert code == 2 and "--subsets, --max-new-tokens only apply when rank runs the model" in err
    assert not (tmp_path / "o").exists()
