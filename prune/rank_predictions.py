"""``encslim rank --predictions``: a ranking from per-sample prediction files made elsewhere.

Instead of running a model, ``rank`` reads one set of prediction files per kept set (the full
model, each slot masked alone, optionally more) and scores every prediction with encslim's own
scorers (:func:`encslim.data.scorers.score`, the metric chosen as the data readers choose it),
then computes CUR, IG, bootstrap intervals, Shapley values and the frontier with the same code
as a model run (:func:`encslim.prune.rank_compute.compute_ranking`).

Keys name the mask set of a file (or a folder of files): ``full``, ``masked:sam`` or
``masked:sam+clip`` (the masked slots), ``kept:clip`` (the kept slots). Without ``--model`` the
slots are the names the keys use, in order of first appearance, and costs are unknown.

Formats (by extension, and for ``.jsonl`` by content):

* VLMEvalKit prediction files ``{model}_{dataset}.xlsx`` / ``.tsv`` / ``.json`` (a list of row
  objects, or pandas' column orientation): columns ``index``, ``prediction``, ``answer``, and
  optionally ``question``, ``category`` / ``l2-category``, option columns ``A``..``Z`` (then the
  answer is a letter or an option's text), ``hint``, ``metric`` (encslim's extension),
  ``image`` (base64, or a short cell naming another row's ``index``) / ``image_path`` (only
  their identity is used, for the clustered bootstrap). ``.xlsx`` needs openpyxl.
* lmms-eval per-sample logs ``samples_<task>.jsonl`` (``--log_samples``): ``doc_id``,
  ``target``, ``filtered_resps`` (else ``resps``): the first generated text, and from ``doc``:
  ``question``, ``category`` / ``l2-category``, options ``A``..``Z`` or ``options`` (a list),
  ``metric``, and ``image_id`` / ``image_path`` / ``image`` (a string) as the image identity.
* A ``.jsonl`` whose rows lack ``doc_id`` is read as VLMEvalKit rows (same columns).

The metric: a ``metric`` column, else MCQ with options, else by data set name as the readers do
(:func:`encslim.data.fields.default_metric`), the name being the part of the file stem after the
model name that starts with a known benchmark (``mymodel_DocVQA_VAL`` -> ANLS; none: VQA accuracy).
With ``--data`` the benchmark files decide answers, options, metric, category and image (and so
the bootstrap clusters), the prediction files only the predictions, matched by index.
"""

import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..data.predictions import prediction_files, read_rows
from ..data.fields import LETTERS, METRIC_BY_DATASET, check_metric, default_metric, is_missing, mcq_answer, \
    parse_answers, parse_options, text_of
from ..data.samples import Sample
from ..data.scorers import score
from ..errors import ConfigError, DataError
from ..files import atomic_output_dir, check_output_path
from ..models.slots import SlotSet, parse_key as parse_slot_key, slots_of_keys
from .config import RankConfig
from .rank_compute import compute_ranking, image_clusters
from .shapley import is_complete

if TYPE_CHECKING:
    from ..models.adapter import Adapter
    from .rank import Ranking

MAX_REFERENCE_LENGTH = 64  # a VLMEvalKit image cell this short names another row's index
SHOWN_IDS = 5

PathArg = Union[str, "PathLike[str]"]
DataArg = Union[PathArg, Sequence[PathArg]]
Loaded = tuple[Any, Any, "Adapter"]  # (model, processor, adapter) of load_model
Row = Mapping[str, Any]  # one row of a prediction file, as read


def parse_predictions(pairs: Iterable[str | tuple[str, PathArg]]) -> list[tuple[str, Path]]:
    """``[(key, path)]`` from ``KEY=PATH`` strings (or pairs), in the given order."""
    out: list[tuple[str, Path]] = []
    for item in pairs:
        if isinstance(item, str):
            key, sep, path = item.partition("=")
            if not sep or not key.strip() or not path.strip():
                raise ConfigError(f"--predictions '{item}' is not KEY=PATH (e.g. full=preds/ or masked:sam=preds_nosam/)")
            out.append((key.strip(), Path(path.strip())))
        else:
            out.append((str(item[0]), Path(item[1])))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--predictions key '{next(k for k in keys if keys.count(k) > 1)}' is given twice")
    return out


def _metric_dataset(stem: str) -> str:
    """The part of ``{model}_{dataset}`` that starts with a known benchmark name (else the stem)."""
    parts = stem.split("_")
    for i in range(len(parts)):
        candidate = "_".join(parts[i:])
        if any(candidate.lower().startswith(prefix) for prefix, _ in METRIC_BY_DATASET):
            return candidate
    return stem


def _cell(row: Row, name: str) -> Any:
    value = row.get(name)
    return None if is_missing(value) else value


def _prediction_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return text_of(value) if isinstance(value, float) else str(value)


class _Row:
    """One parsed prediction row: id, prediction, and what a sample needs when no --data is given."""

    __slots__ = ("index", "prediction", "fields", "image_ref")

    def __init__(self, index: str, prediction: str, fields: dict[str, Any], image_ref: str | None) -> None:
        self.index, self.prediction, self.fields, self.image_ref = index, prediction, fields, image_ref


def _vlmeval_row(row: Row, images: Mapping[str, str]) -> _Row:
    index = _cell(row, "index")
    if index is None:
        raise ValueError("no index")
    if "prediction" not in row:
        raise ValueError("no prediction column")
    fields = {"question": _cell(row, "question"), "answer": row.get("answer"),
              "options": {k: row[k] for k in LETTERS if k in row}, "hint": _cell(row, "hint"),
              "category": _cell(row, "category") or _cell(row, "l2-category"), "metric": _cell(row, "metric")}
    return _Row(text_of(index), _prediction_text(row.get("prediction")), fields, _vlmeval_image(row, images))


def _vlmeval_image(row: Row, images: Mapping[str, str]) -> str | None:
    cell = _cell(row, "image")
    if cell is not None:
        cell = str(cell).strip()
        if len(cell) <= MAX_REFERENCE_LENGTH:  # another row's index: that row's image
            return images.get(cell, f"index:{cell}")
        return "b64:" + hashlib.sha1(cell.encode()).hexdigest()
    path = _cell(row, "image_path")
    return None if path is None else f"path:{str(path).strip()}"


def _lmms_row(row: Row) -> _Row:
    doc: dict[str, Any] = row["doc"] if isinstance(row.get("doc"), dict) else {}
    responses = row.get("filtered_resps", row.get("resps"))
    prediction = responses
    while isinstance(prediction, (list, tuple)) and prediction:
        prediction = prediction[0]
    if isinstance(prediction, (list, tuple)) or prediction is None:
        prediction = ""
    if not isinstance(prediction, str):
        raise ValueError("its responses are not generated text (a loglikelihood task?); only generation "
                         "tasks are supported")
    options = {k: doc[k] for k in LETTERS if k in doc}
    if not options and isinstance(doc.get("options"), list):
        options = dict(zip(LETTERS, doc["options"]))
    target = row.get("target")
    if (not target) if isinstance(target, (list, tuple)) else is_missing(target):
        target = doc.get("answers", doc.get("answer"))
    fields = {"question": doc.get("question"), "answer": target, "options": options, "hint": doc.get("hint"),
              "category": _cell(doc, "category") or _cell(doc, "l2-category"), "metric": _cell(doc, "metric")}
    ref = next((doc[k] for k in ("image_id", "image_path", "image") if isinstance(doc.get(k), (str, int))), None)
    return _Row(text_of(row["doc_id"]), prediction, fields, None if ref is None else f"doc:{ref}")


def read_prediction_file(path: Path) -> tuple[str, list[_Row]]:
    """``(kind, [_Row])`` of one file; kind ``"lmms-eval"`` or ``"vlmevalkit"``.

    Raises:
        DataError: an unreadable file, no rows, or a bad row (file and row named).
    """
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} holds no predictions")
    kind = "lmms-eval" if "doc_id" in rows[0] else "vlmevalkit"
    images: dict[str, str] = {}
    if kind == "vlmevalkit":
        for row in rows:  # rows with their own image, for the short cells that reference them
            cell, index = _cell(row, "image"), _cell(row, "index")
            if cell is not None and index is not None and len(str(cell).strip()) > MAX_REFERENCE_LENGTH:
                images[text_of(index)] = "b64:" + hashlib.sha1(str(cell).strip().encode()).hexdigest()
    out: list[_Row] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        try:
            parsed = _lmms_row(row) if kind == "lmms-eval" else _vlmeval_row(row, images)
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path} row {number}: {' '.join(str(err).split())}") from None
        if parsed.index in seen:
            raise DataError(f"{path} row {number}: index '{parsed.index}' appears twice")
        seen.add(parsed.index)
        out.append(parsed)
    return kind, out


def _dataset_names(files: Sequence[Path], kinds: Sequence[str], data_stems: Sequence[str] | None = None) -> list[str]:
    """A data set name per file: lmms-eval's task, a VLMEvalKit stem less the shared model prefix,
    or (with --data) the data file stem the name ends with."""
    names = []
    for path, kind in zip(files, kinds):
        stem = path.stem
        if kind == "lmms-eval" and "samples_" in stem:
            stem = stem.split("samples_", 1)[1]
        names.append(stem)
    if data_stems:
        matched = []
        for path, stem in zip(files, names):
            hits = [d for d in data_stems if stem == d or stem.endswith("_" + d)]
            if not hits:
                raise DataError(f"prediction file {path} names none of the --data sets ({', '.join(data_stems)}); "
                                f"name it <model>_<data set>")
            matched.append(max(hits, key=len))
        return matched
    vlm = [i for i, k in enumerate(kinds) if k == "vlmevalkit"]
    if len(vlm) > 1:  # strip the model name all of them start with
        split = [names[i].split("_") for i in vlm]
        common = 0
        while all(len(p) > common + 1 and p[common] == split[0][common] for p in split):
            common += 1
        for i, parts in zip(vlm, split):
            names[i] = "_".join(parts[common:])
    return names


def _read_key(key: str, path: Path, data_stems: Sequence[str] | None = None,
              qualify: bool | None = None) -> tuple[dict[str, _Row], list[Path], dict[str, str]]:
    """``({id: _Row}, [files], {id: dataset})`` of one --predictions entry."""
    files = prediction_files(path)
    parsed = [read_prediction_file(f) for f in files]
    kinds = [k for k, _ in parsed]
    datasets = _dataset_names(files, kinds, data_stems)
    if qualify is None:
        qualify = len(files) > 1
    rows: dict[str, _Row] = {}
    origin: dict[str, tuple[str, Path]] = {}
    for file, dataset, (_, file_rows) in zip(files, datasets, parsed):
        for row in file_rows:
            sid = f"{dataset}/{row.index}" if qualify else row.index
            if sid in rows:
                raise DataError(f"predictions {key}: sample '{sid}' appears in {origin[sid][1]} and {file}")
            rows[sid], origin[sid] = row, (dataset, file)
    return rows, files, {sid: o[0] for sid, o in origin.items()}


def _sample(sid: str, row: _Row, dataset: str) -> Sample:
    f = row.fields
    answers = parse_answers(f["answer"])
    options = parse_options(f["options"])
    metric = check_metric(str(f["metric"]).strip()) if f["metric"] is not None else \
        default_metric(_metric_dataset(dataset), bool(options))
    if metric == "mcq":
        if not options:
            raise ValueError("metric 'mcq' needs option columns A, B, ...")
        answers = [mcq_answer(answers, options)]
    return Sample(id=sid, question="" if f["question"] is None else str(f["question"]).strip(), answers=answers,
                  options=options if metric == "mcq" else {}, hint="" if f["hint"] is None else str(f["hint"]).strip(),
                  category=text_of(f["category"]) if f["category"] is not None else dataset, metric=metric,
                  source=sid, dataset=dataset)


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(map(str, ids[:SHOWN_IDS]))
    return f"{len(ids)} sample(s): {shown}" + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def _check_same_samples(key: str, ids: Sequence[str], reference: Sequence[str], reference_name: str) -> None:
    have = set(ids)
    missing = [i for i in reference if i not in have]
    extra = [i for i in ids if i not in set(reference)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lack {_id_list(missing)} that {reference_name} has")
        if extra:
            parts.append(f"hold {_id_list(extra)} that {reference_name} lacks")
        raise DataError(f"predictions {key} {' and '.join(parts)}; every prediction set must cover the same samples")


# ---------------------------------------------------------------- the ranking
def _mask_sets(keys: Iterable[str], slots: Sequence[str]) -> dict[str, frozenset[str]]:
    """``{key: frozenset(masked)}`` of the --predictions keys (:class:`SlotSet`, checked against
    ``slots``); repeated mask sets refused."""
    out: dict[str, frozenset[str]] = {}
    for key in keys:
        masked = SlotSet.parse(slots, key).masked
        clash = next((k for k, m in out.items() if m == masked), None)
        if clash is not None:
            raise ConfigError(f"--predictions {clash} and {key} name the same mask set; give each mask set once")
        out[key] = masked
    return out


def _subsets_mode(slots: Sequence[str], masks: Sequence[frozenset[str]]) -> str:
    kept = {frozenset(slots) - m: m for m in masks}
    if is_complete(slots, kept):
        return "all"
    pairs = [frozenset({a, b}) for i, a in enumerate(slots) for b in slots[i + 1:]]
    return "pairs" if all(p in masks for p in pairs) else "single"


def rank_predictions(predictions: Iterable[str | tuple[str, PathArg]],
                     config: RankConfig | Mapping[str, Any] | None = None, *, model: PathArg | None = None,
                     data: DataArg | None = None, out: PathArg | None = None, **overrides: Any) -> "Ranking":
    """Rank slots from prediction files, one set per mask set (see the module doc for formats).

    Args:
        predictions: ``KEY=PATH`` strings or ``(key, path)`` pairs; ``full`` is required, and each
            slot masked alone (for CUR).
        config: a :class:`~encslim.prune.config.RankConfig` (or a dict of its fields; default: its
            defaults). Read here: ``categories`` (keep only these), ``bootstrap``, ``seed``, ``alpha``
            (as for :func:`encslim.prune.rank.rank`, clustered by image when images carry several
            questions), ``mask`` (the mask the predictions were made with; recorded only),
            ``overwrite`` (replace an existing ``out``), ``device`` and ``dtype`` (where and how to load
            ``model``, for its costs); the fields of a model run are not used.
        model: optional model folder: its slots (keys are checked against them) and costs.
        data: optional benchmark file(s): answers, options, metric, category, images by index.
        out: folder to write ``ranking.json``, ``ranking.md`` and the plots to (``None``: nothing).
        **overrides: fields of ``config`` to change.

    Returns:
        :class:`encslim.prune.rank.Ranking`.

    Raises:
        ConfigError: bad keys or options; DataError: unreadable files, mismatched samples.
    """
    from .rank import Ranking, rank_config, write_ranking

    start = time.perf_counter()
    config = rank_config(config, **overrides)  # bad values: ConfigError, as rank's
    pairs = parse_predictions(predictions)
    keys = [key for key, _ in pairs]
    _check_keys(keys)
    inputs: list[PathArg] = [p for _, p in pairs] + ([] if model is None else [model]) + _data_paths(data)
    if out is not None:
        check_output_path(out, config.overwrite, inputs=inputs)
    loaded, slots, masks = _slots_and_masks(keys, model, config)
    samples, clusters, table, files = _load(pairs, data, config.categories)
    scores = {}
    for key, _ in pairs:
        rows = table[key]
        scores[masks[key]] = np.array([score(s.metric, rows[s.id].prediction, s.answers, s.options, s.category)
                                       for s in samples], dtype=float)
    mode = _subsets_mode(slots, list(scores))
    data_out = compute_ranking(slots, [s.category for s in samples], scores, _costs(loaded, slots),
                               config.merged(subsets=mode), clusters=clusters)
    data_out.update(_prediction_fields(model, config, slots, masks, files))
    data_out["evaluation"] = {"mask_sets_evaluated": 0, "mask_sets_cached": 0,
                              "mask_sets_from_predictions": len(pairs), "encoder_passes_per_sample": 0.0,
                              "feature_store": None, "wall_s": round(time.perf_counter() - start, 3), "threads": None}
    ranking = Ranking(data_out)
    if out is not None:
        with atomic_output_dir(out, overwrite=config.overwrite, inputs=inputs) as tmp:
            write_ranking(ranking.data, tmp)
        ranking.out = Path(out)
    return ranking


def _data_paths(data: DataArg | None) -> list[PathArg]:
    """The benchmark files of ``--data`` (none: empty)."""
    if data is None:
        return []
    return [data] if isinstance(data, (str, PathLike)) else list(data)


def _check_keys(keys: list[str]) -> None:
    """Every key's syntax, and ``full`` among them, before any file is read.

    Raises:
        ConfigError: a bad key, or no ``full``.
    """
    for key in keys:
        parse_slot_key(key)
    if "full" not in keys:
        raise ConfigError("--predictions needs full=PATH: the full model's predictions (every slot kept)")


def _slots_and_masks(keys: list[str], model: PathArg | None,
                     config: RankConfig) -> tuple[Loaded | None, list[str], dict[str, frozenset[str]]]:
    """``(loaded model or None, slots, {key: masked})``: the slots from ``model`` or else from the keys,
    each key's mask set checked against them, and every slot masked alone required.

    Raises:
        ConfigError: no slot, a repeated mask set or a slot never masked alone.
    """
    loaded: Loaded | None = None
    if model is not None:  # the keys checked against the model's config, before its weights load
        from ..models.loading import adapter_for, load_model

        adapter = adapter_for(model)
        slots = list(adapter.slot_names(adapter.read_config(model)))
        masks = _mask_sets(keys, slots)
        loaded = load_model(model, device=config.device, dtype=config.dtype)
    else:
        slots = slots_of_keys(keys)
        if not slots:
            raise ConfigError("--predictions names no slot; add masked:SLOT=PATH for each slot (or pass --model)")
        masks = _mask_sets(keys, slots)
    missing = [s for s in slots if frozenset({s}) not in masks.values()]
    if missing:
        raise ConfigError(f"no predictions with {', '.join(missing)} masked alone; CUR needs the full model and "
                          f"each slot masked alone: add " + " ".join(f"--predictions masked:{s}=PATH" for s in missing))
    return loaded, slots, masks


def _prediction_fields(model: PathArg | None, config: RankConfig, slots: list[str], masks: Mapping[str, frozenset[str]],
                       files: Mapping[str, list[Path]]) -> dict[str, Any]:
    """The ranking's fields that say it came from prediction files (and, without a model, why costs are unknown)."""
    fields: dict[str, Any] = {
        "model": str(model) if model is not None else "<predictions>",
        "mask_mode": config.mask,
        "empty_set_mask": "as in the prediction files",
        "source": "predictions",
        "predictions": {key: {"masked": [s for s in slots if s in masked], "files": [str(f) for f in files[key]]}
                        for key, masked in masks.items()},
    }
    if model is None:
        fields["costs_note"] = ("no --model: slot costs (vision FLOPs, parameters) are unknown, so the frontier "
                                "has no costs; pass --model to report them")
    return fields


def _costs(loaded: Loaded | None, slots: Sequence[str]) -> Mapping[str, Mapping[str, int | None]]:
    if loaded is None:
        return {s: {"vision_flops": None, "params": None} for s in slots}
    from .subsets import slot_costs

    return slot_costs(*loaded)


def _load(pairs: Sequence[tuple[str, Path]], data: DataArg | None, categories: Sequence[str] | None,
          ) -> tuple[list[Sample], list[str], dict[str, dict[str, _Row]], dict[str, list[Path]]]:
    """``(samples, clusters, {key: {id: _Row}}, {key: [files]})``: samples in reference order."""
    from ..data.load import load_samples

    data_samples = None
    data_stems = None
    if data is not None:
        paths = [Path(d) for d in _data_paths(data)]
        data_samples = load_samples(paths)
        data_stems = [p.stem for p in paths] if len(paths) > 1 else None
    table, files, datasets = {}, {}, {}
    for key, path in pairs:
        qualify = None if data is None else data_stems is not None
        table[key], files[key], datasets[key] = _read_key(key, path, data_stems, qualify)
    full = table["full"]
    if data_samples is not None:
        reference = [s.id for s in data_samples]
        _check_same_samples("full", list(full), reference, "--data")
    else:
        reference = list(full)
    for key, _ in pairs:
        if key != "full":
            _check_same_samples(key, list(table[key]), reference, "full")

    if data_samples is not None:
        samples = list(data_samples)
        clusters = image_clusters(samples)
    else:
        samples, clusters = [], []
        for sid in reference:
            row = full[sid]
            try:
                samples.append(_sample(sid, row, datasets["full"][sid]))
            except ValueError as err:
                raise DataError(f"predictions full, sample '{sid}': {' '.join(str(err).split())}") from None
            clusters.append(row.image_ref if row.image_ref is not None else f"row:{sid}")
        clusters = [f"{s.dataset}:{c}" for s, c in zip(samples, clusters)]
    if categories:
        available = sorted({s.category for s in samples})
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise DataError(f"categor{'y' if len(unknown) == 1 else 'ies'} {unknown} not in the predictions; "
                            f"available: {', '.join(available)}")
        keep = [i for i, s in enumerate(samples) if s.category in set(categories)]
        samples, clusters = [samples[i] for i in keep], [clusters[i] for i in keep]
    return samples, clusters, table, files

