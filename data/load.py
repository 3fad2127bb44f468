"""Read benchmark and training files into :class:`~encslim.data.samples.Sample` lists.

Formats, chosen by extension: ``.tsv`` VLMEvalKit TSV (:mod:`encslim.data.tsv`); ``.jsonl``
one sample a line, or LLaVA records (:mod:`encslim.data.jsonl`); ``.json`` a list of LLaVA
conversation records (or of JSONL-style samples).

A bad row (missing image file, broken base64, an image path leaving the data folder, no
answer, ...) raises a one-line :class:`~encslim.errors.DataError` naming the file and the row;
with ``skip_bad`` the row is skipped and reported in ``SampleList.skipped_rows``. Problems with
a whole file (missing, empty, a TSV without the required columns) always raise.
"""

import logging
from pathlib import Path

from ..errors import DataError
from .benchmarks import study_category
from .jsonl import json_rows, jsonl_rows
from .tsv import tsv_rows

logger = logging.getLogger(__name__)

READERS = {".tsv": tsv_rows, ".jsonl": jsonl_rows, ".json": json_rows}


class SampleList(list):
    """A list of samples that also remembers the rows skipped while reading.

    Attributes:
        skipped_rows: one line per skipped row, ``"<file> row <n>: <reason>"``.
    """

    def __init__(self, samples=(), skipped_rows=()):
        super().__init__(samples)
        self.skipped_rows = list(skipped_rows)

    @property
    def skipped(self):
        """Number of rows skipped as bad."""
        return len(self.skipped_rows)


def load_samples(paths, skip_bad=False, category=None):
    """Read one or several benchmark files.

    Args:
        paths: a path or a list of paths (``.tsv``, ``.jsonl``, ``.json``).
        skip_bad: skip bad rows (counted in ``.skipped``) instead of raising.
        category: category of rows that carry none; default: the study's category when the
            file's stem names one of its benchmarks (:mod:`encslim.data.benchmarks`, e.g.
            ``MMBench_DEV_EN`` -> ``General``), else the file's stem.

    Returns:
        SampleList of Sample, in file order. With several files every id is qualified by its
        data set name (``"<stem>/<id>"``) so ids stay unique; a single file keeps its ids.

    Raises:
        DataError: a missing, empty or malformed file, a bad row (unless ``skip_bad``), a
            duplicate id, or no usable sample at all.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise DataError("no data files given; pass at least one .tsv, .jsonl or .json file")
    _check_paths(paths)
    samples, skipped = [], []
    for path in paths:
        file_samples, file_skipped = _read_file(path, skip_bad, category)
        if len(paths) > 1:
            for sample in file_samples:
                sample.id = f"{sample.dataset}/{sample.id}"
        samples.extend(file_samples)
        skipped.extend(file_skipped)
    if not samples:
        raise DataError(f"no usable samples in {', '.join(map(str, paths))} ({len(skipped)} bad rows skipped)")
    if skipped:
        logger.warning("skipped %d bad row(s); first: %s", len(skipped), skipped[0])
    return SampleList(samples, skipped)


def _check_paths(paths):
    stems = {}
    for path in paths:
        if path.is_dir():
            raise DataError(f"data path {path} is a folder, not a file{_files_inside(path)}; pass a benchmark file: "
                            ".tsv (VLMEvalKit), .jsonl or .json (LLaVA)")
        if not path.is_file():
            raise DataError(f"data file {path} not found; check the path")
        if path.suffix.lower() not in READERS:
            raise DataError(f"{path}: unknown data format '{path.suffix}'; use .tsv (VLMEvalKit), .jsonl or .json (LLaVA)")
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty; it holds no samples")
        stem = path.stem
        if stem in stems:
            raise DataError(f"{stems[stem]} and {path} share the data set name '{stem}'; rename one of them")
        stems[stem] = path


def _files_inside(folder, limit=3):
    """`` (it holds a.jsonl, b.tsv)``: the data files directly in ``folder``, or ``""`` if none."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READERS)
    except OSError:
        return ""
    if not names:
        return ""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f" (it holds {', '.join(names[:limit])}{more})"


def _read_file(path, skip_bad, category):
    """``(samples, skipped row messages)`` of one file."""
    reader = READERS[path.suffix.lower()]
    samples, skipped, seen = [], [], {}
    try:
        rows = list(reader(path, path.stem, category or study_category(path.stem) or path.stem))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    for label, build in rows:
        try:
            sample = build()
            if sample.id in seen:
                raise ValueError(f"duplicate id '{sample.id}' (first at row {seen[sample.id]})")
        except (ValueError, OSError) as err:
            reason = " ".join(str(err).split())
            message = f"{path} row {label}: {reason}"
            if not skip_bad:
                raise DataError(f"{message}; fix the row or pass --skip-bad to skip bad rows") from None
            skipped.append(message)
            continue
        seen[sample.id] = label
        samples.append(sample)
    return samples, skipped
