"""VLMEvalKit TSV benchmark files.

Columns: ``index``; ``image`` (base64, or a short string naming another row's ``index`` whose
image the row reuses) or ``image_path`` (relative to the TSV's folder); ``question``;
``answer``; options ``A`` .. ``Z``; optional ``hint``, ``category``, ``l2-category``,
``split`` and (an encslim extension) ``metric``. Cells pandas wrote for missing values
(empty, ``nan``) count as absent.
"""

import csv
import sys
from contextlib import contextmanager

from ..errors import DataError
from .fields import LETTERS, ImageLoader, check_metric, default_metric, is_missing, mcq_answer, parse_answers, \
    parse_options, text_of
from .samples import Sample

REQUIRED_COLUMNS = ("index", "question", "answer")
# VLMEvalKit stores the index of the row whose image is reused when the image cell is this short
MAX_REFERENCE_LENGTH = 64


@contextmanager
def _large_fields():
    """Allow base64 images longer than csv's default 128 KiB field limit, then restore it."""
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_table(path):
    """``(header, rows)`` of a TSV file; each row a dict column -> text.

    Raises:
        DataError: required columns missing, or no data rows.
    """
    with _large_fields(), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty; a VLMEvalKit TSV needs a header and one row per sample")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if "image" not in header and "image_path" not in header:
            missing.append("image or image_path")
        if missing:
            raise DataError(
                f"{path} lacks the required column(s) {', '.join(missing)}; a VLMEvalKit TSV needs "
                f"index, question, answer and image (base64) or image_path"
            )
        rows = [(n, cells) for n, cells in enumerate(reader, 1) if any(c.strip() for c in cells)]
    if not rows:
        raise DataError(f"{path} holds a header but no samples")
    return header, rows


def tsv_rows(path, dataset, default_category):
    """Yield ``(row label, build)`` per data row; ``build()`` returns a Sample or raises ValueError.

    Args:
        path: the TSV file.
        dataset: the data set name (the file stem).
        default_category: category for rows without ``category`` / ``l2-category``.

    Raises:
        DataError: file-level problems (see :func:`read_table`).
    """
    header, rows = read_table(path)
    table = []
    for number, cells in rows:
        record = dict(zip(header, cells)) if len(cells) == len(header) else None
        table.append((number, cells, record))
    images_by_index = {
        text_of(r["index"]): r["image"] for _, _, r in table if r is not None and not is_missing(r.get("image"))
    }
    loader = ImageLoader(path.parent)
    index_column = header.index("index")
    for number, cells, record in table:
        index = cells[index_column] if index_column < len(cells) else ""
        label = f"{number} (index {text_of(index)})" if not is_missing(index) else str(number)
        yield label, _builder(record, len(cells), len(header), images_by_index, loader, dataset,
                              default_category, path.name, number)


def _builder(record, n_cells, n_columns, images_by_index, loader, dataset, default_category, file_name, number):
    def build():
        if record is None:
            raise ValueError(f"{n_cells} fields for {n_columns} columns; check the tabs in this row")
        return _sample(record, images_by_index, loader, dataset, default_category, f"{file_name}:{number}")
    return build


def _sample(record, images_by_index, loader, dataset, default_category, source):
    index = record["index"]
    if is_missing(index):
        raise ValueError("empty index")
    question = record["question"]
    if is_missing(question):
        raise ValueError("empty question")
    answers = parse_answers(record["answer"])
    options = parse_options({k: record[k] for k in LETTERS if k in record})
    metric = record.get("metric")
    metric = check_metric(metric.strip()) if not is_missing(metric) else default_metric(dataset, bool(options))
    if metric == "mcq":
        if not options:
            raise ValueError("metric 'mcq' needs option columns A, B, ...")
        answers = [mcq_answer(answers, options)]
    category = next((text_of(record[c]) for c in ("category", "l2-category")
                     if c in record and not is_missing(record[c])), default_category)
    hint = record.get("hint")
    return Sample(
        id=text_of(index), question=question.strip(), answers=answers, image=_image(record, images_by_index, loader),
        options=options if metric == "mcq" else {}, hint="" if is_missing(hint) else hint.strip(),
        category=category, metric=metric, source=source, dataset=dataset,
    )


def _image(record, images_by_index, loader):
    cell = record.get("image")
    if not is_missing(cell):
        cell = cell.strip()
        if len(cell) <= MAX_REFERENCE_LENGTH:
            target = images_by_index.get(cell)
            if target is None or len(target.strip()) <= MAX_REFERENCE_LENGTH:
                raise ValueError(f"image '{cell}' names no row with an image (a short image cell is a row index)")
            cell = target.strip()
        if cell.startswith("["):
            raise ValueError("several images per sample are not supported; give one image")
        return loader.load_base64(cell)
    path = record.get("image_path")
    if is_missing(path):
        raise ValueError("no image: both image and image_path are empty")
    return loader.load(path.strip())
