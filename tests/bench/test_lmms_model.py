"""The lmms-eval model (encslim/bench/lmms_model.py), driven as lmms-eval 0.7.3 drives it.

lmms-eval builds the model with ``create_from_arg_string(model_args, {"batch_size", "max_batch_size",
"device"})``, sets ``model.task_dict[task] = dataset`` (``{split: {doc_id: doc}}``) and calls
``generate_until(requests)``; each request's ``args`` is ``(context, deepcopy(generation_kwargs),
doc_to_visual, doc_id, task, split)``. Without lmms-eval installed the requests are small
stand-ins with the same ``args``; with it, real ``Instance`` objects and the real base class.
"""

import configparser
import json
import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from encslim.bench import lmms_model
from encslim.bench.lmms_model import EncslimLmms, cut_at_stops, manifest, parse_masked
from encslim.cli import cli
from encslim.data.load import load_samples
from encslim.data.prompts import build_question
from encslim.data.scorers import score
from encslim.errors import ConfigError, DataError

from ..conftest import make_image, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TASK, SPLIT = "tiny_vqa", "test"
ENTRY_POINT = "encslim = encslim.bench.lmms_model:manifest"

try:
    from lmms_eval.api.instance import Instance
except ImportError:
    Instance = None


class _Request:
    """What an lmms-eval ``Instance`` offers a model: ``args`` (and ``arguments``)."""

    def __init__(self, arguments):
        self.arguments = arguments

    @property
    def args(self):
        return self.arguments


def request(args, idx=0):
    if Instance is not None:
        return Instance(request_type="generate_until", arguments=args, idx=idx,
                        metadata={"task": args[4], "doc_id": args[3], "repeats": 1})
    return _Request(args)


def doc_to_visual(doc):
    return [doc["image"]] if doc["image"] is not None else []


def requests_for(docs, gen_kwargs, contexts=None):
    """Requests as ``Task.construct_requests`` builds them (each with its own copy of gen_kwargs)."""
    contexts = contexts or {i: doc["context"] for i, doc in docs.items()}
    return [request((contexts[i], dict(gen_kwargs), doc_to_visual, i, TASK, SPLIT), idx=i) for i in docs]


def make_model(path, **kwargs):
    return EncslimLmms(pretrained=str(path), **kwargs)


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory):
    """A tiny task: open questions (exact, vqa), one MCQ (answered by generation) and one text-only row."""
    root = tmp_path_factory.mktemp("lmms_task")
    (root / "images").mkdir()
    items = []
    for i in range(5):
        make_image(40 + i).save(root / "images" / f"{i}.png")
        items.append({"id": f"q{i}", "image": f"images/{i}.png", "question": f"What is shown in picture {i}?",
                      "answer": "placeholder", "metric": "vqa" if i == 1 else "exact", "category": "General"})
    items.append({"id": "m0", "image": "images/0.png", "question": "Which colour?", "options": ["red", "blue"],
                  "answer": "A", "category": "General"})
    items.append({"id": "t0", "question": "Say a word.", "answer": "placeholder", "metric": "exact",
                  "category": "General"})
    return root, items


@pytest.fixture(scope="module")
def task(bench_file):
    """``{doc_id: doc}`` of the task, each doc with its Sample, image and lmms-eval context."""
    root, items = bench_file
    path = write_jsonl(root / "bench.jsonl", items)
    samples = list(load_samples(path))
    return {i: {"sample": s, "image": s.image, "context": build_question(s)} for i, s in enumerate(samples)}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("A1")


@pytest.fixture(scope="module")
def masked_model(model_dir, task):
    model = make_model(model_dir, masked="clip", batch_size=2, max_new_tokens=3)
    model.task_dict[TASK] = {SPLIT: task}
    return model


def test_answers_and_scores_equal_encslim_eval(model_dir, bench_file, task, masked_model, tmp_path):
    full = make_model(model_dir, masked="", batch_size=2, max_new_tokens=3)
    full.task_dict[TASK] = {SPLIT: task}
    answers = {"": full.generate_until(requests_for(task, {"until": []})),
               "clip": masked_model.generate_until(requests_for(task, {"until": []}))}
    assert answers["clip"] != answers[""], "masking clip changed no answer: the test would not see a mask"

    # ground truth: half the samples are answered right under the mask (known accuracy), half not
    root, items = bench_file
    items = [dict(it) for it in items]
    for i, item in enumerate(items):
        if item["id"] != "m0":
            item["answer"] = answers["clip"][i] if i % 2 == 0 and answers["clip"][i] else "zzz-never"
    data = write_jsonl(tmp_path / "bench.jsonl", items)
    for i, item in enumerate(items):  # same images: the task's PNGs
        if "image" in item:
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / item["image"]).write_bytes((root / item["image"]).read_bytes())
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", str(model_dir), "--data", str(data), "--mask", "clip",
                                      "--max-new-tokens", "3", "--batch-size", "2", "--mcq", "generate",
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    report = json.loads((out / "eval.json").read_text())
    samples = list(load_samples(data))
    assert [s.id for s in samples] == [task[i]["sample"].id for i in task]
    for key, masked in (("", []), ("clip", ["clip"])):
        predicted = {r["sample_id"]: r["prediction"] for r in records if r["masked"] == masked}
        assert answers[key] == [predicted[s.id] for s in samples], key
        scores = [score(s.metric, a, s.answers, s.options, s.category) for s, a in zip(samples, answers[key])]
        accuracy = next(r["accuracy"]["overall"] for r in report["results"] if r["masked"] == masked)
        assert sum(scores) / len(scores) == pytest.approx(accuracy, abs=1e-12), key
    clip_scores = [score(s.metric, a, s.answers, s.options, s.category) for s, a in zip(samples, answers["clip"])]
    assert 0 < sum(clip_scores) < len(clip_scores)


def test_until_cuts_at_the_first_stop_string(masked_model, task):
    plain = masked_model.generate_until(requests_for(task, {"until": []}))
    row = next(i for i, text in enumerate(plain) if len(text) >= 3)
    text = plain[row]
    stop, later = text[1], text[2:]
    cut = masked_model.generate_until([requests_for(task, {"until": ["never-there", "", later, stop]})[row]])
    assert cut == [text[:text.index(stop)].strip()]
    as_string = masked_model.generate_until([requests_for(task, {"until": later})[row]])
    assert as_string == [text[:text.index(later)].strip()]
    assert cut_at_stops("a. b\n\nc", ["\n\n", "."]) == "a" and cut_at_stops("abc", []) == "abc"
    with pytest.raises(ConfigError, match="until"):
        masked_model.generate_until([requests_for(task, {"until": 3})[row]])


def test_greedy_forced_budget_honoured_kwargs_untouched(masked_model, task, caplog):
    plain = masked_model.generate_until(requests_for(task, {"until": []}))
    shared = {"until": ["zzz"], "temperature": 0.9, "do_sample": True, "num_beams": 4, "top_p": 0.5}
    reqs = [request((task[i]["context"], shared, doc_to_visual, i, TASK, SPLIT)) for i in task]
    masked_model._warned.clear()
    with caplog.at_level(logging.WARNING, logger="encslim.bench.lmms_model"):
        assert masked_model.generate_until(reqs) == plain
        masked_model.generate_until(reqs)
    forced = [r for r in caplog.records if "greedy decoding forced" in r.getMessage()]
    assert len(forced) == 1 and "do_sample, num_beams, temperature, top_p" in forced[0].getMessage()
    assert shared == {"until": ["zzz"], "temperature": 0.9, "do_sample": True, "num_beams": 4, "top_p": 0.5}
    one = masked_model.generate_until(requests_for(task, {"until": [], "max_new_tokens": 1}))
    tok = masked_model.tokenizer
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) <= 2 for a in one)
    assert all(p.startswith(a) for a, p in zip(one, plain))


def test_batches_keep_request_order(model_dir, task, masked_model):
    reference = masked_model.generate_until(requests_for(task, {"until": []}))  # batch_size 2
    single = make_model(model_dir, masked="clip", batch_size=1, max_new_tokens=3)
    single.task_dict[TASK] = {SPLIT: task}
    order = [6, 0, 5, 3, 1, 4, 2]  # text-only first, the MCQ between images
    reqs = requests_for(task, {"until": []})
    mixed = [reqs[i] for i in order]
    assert single.generate_until(mixed) == [reference[i] for i in order]
    wide = make_model(model_dir, masked="clip", batch_size=3, max_new_tokens=3)
    wide.task_dict[TASK] = {SPLIT: task}
    assert wide.generate_until(mixed) == [reference[i] for i in order]


def test_context_with_image_token_gets_one_placeholder(masked_model, task):
    plain = masked_model.generate_until(requests_for(task, {"until": []}))
    tagged = {i: ("<image>\n" + doc["context"]) for i, doc in task.items()}
    assert masked_model.generate_until(requests_for(task, {"until": []}, contexts=tagged)) == plain
    assert masked_model._question("<image>\nWhat?") == "What?" and masked_model._question("What?") == "What?"


def test_unknown_slot_and_bad_arguments(model_dir):
    with pytest.raises(ConfigError, match="unknown slot\\(s\\) sam; this model's slots are clip, siglip, dinov2"):
        make_model(model_dir, masked="sam")
    with pytest.raises(ConfigError, match="every encoder"):
        make_model(model_dir, masked="clip+siglip+dinov2")
    with pytest.raises(ConfigError, match="mask_mode=mean"):
        make_model(model_dir, masked="clip", mask_mode="mean")
    with pytest.raises(ConfigError, match="unknown model_args temperature"):
        make_model(model_dir, temperature=0.1)
    assert parse_masked("sam+clip") == ["sam", "clip"] and parse_masked('"a,b"') == ["a", "b"]
    assert parse_masked("") == [] and parse_masked(None) == []


def test_built_from_model_args_as_lmms_eval_does(model_dir, task):
    model = EncslimLmms.create_from_arg_string(
        f"pretrained={model_dir},masked=siglip+clip,mask_mode=zero,max_new_tokens=2",
        {"batch_size": 2, "max_batch_size": None, "device": None})
    assert model.masked == frozenset({"clip", "siglip"}) and model.mask_mode == "zero"
    assert model.batch_size == 2 and model.max_new_tokens == 2 and str(model.device) == "cpu"
    assert model.rank == 0 and model.world_size == 1 and model.is_simple
    model.task_dict[TASK] = {SPLIT: task}
    assert len(model.generate_until(requests_for(task, {}))) == len(task)


def test_unsupported_requests_and_videos(masked_model, task):
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        masked_model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        masked_model.generate_until_multi_round([])
    video = request((task[0]["context"], {}, lambda doc: ["clip.mp4"], 0, TASK, SPLIT))
    with pytest.raises(DataError, match="video"):
        masked_model.generate_until([video])
    two = request((task[0]["context"], {"until": []}, lambda doc: [doc["image"], make_image(1)], 0, TASK, SPLIT))
    first = request((task[0]["context"], {"until": []}, lambda doc: [doc["image"]], 0, TASK, SPLIT))
    assert masked_model.generate_until([two]) == masked_model.generate_until([first])


def test_entry_point_and_manifest(tmp_path, monkeypatch):
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [x.strip() for x in config["options.entry_points"]["lmms_eval.models"].splitlines() if x.strip()]
    assert lines == [ENTRY_POINT]
    assert config["options.extras_require"]["lmms"].split() == ["lmms-eval>=0.7"]
    assert "lmms-eval" not in config["options.extras_require"]["test"]
    name, value = (s.strip() for s in ENTRY_POINT.split("="))
    assert EntryPoint(name, value, "lmms_eval.models").load() is manifest
    installed = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "encslim"]
    assert all(ep.value == value for ep in installed)  # present once `pip install -e .` ran again

    if not lmms_model.HAVE_LMMS_EVAL:
        with pytest.raises(ImportError, match=r"encslim\[lmms\]"):
            manifest()
        return
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    assert issubclass(EncslimLmms, lmms)
    found = manifest()
    assert (found.model_id, found.simple_class_path, found.chat_class_path) == (
        "encslim", "encslim.bench.lmms_model.EncslimLmms", None)
    # the real registry, reading the entry point from a distribution that declares it as setup.cfg does
    dist = tmp_path / "encslim_probe-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: encslim-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[lmms_eval.models]\n{ENTRY_POINT}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("encslim") is EncslimLmms
