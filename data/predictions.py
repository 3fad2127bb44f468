"""Reading prediction files made elsewhere (VLMEvalKit ``.xlsx``/``.tsv``/``.json``, lmms-eval ``.jsonl``)
into rows: the I/O half of ``encslim rank --predictions`` (:mod:`encslim.prune.rank_predictions` turns
the rows into scored samples). Every decoding problem is a one-line :class:`~encslim.errors.DataError`.
"""

import csv
import json
import sys
from pathlib import Path

from ..errors import DataError

FORMATS = (".xlsx", ".tsv", ".json", ".jsonl")


def prediction_files(path):
    """The prediction files of a path: the file itself, or a folder's files of known formats (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise DataError(f"{path} holds no prediction files ({', '.join(FORMATS)})")
        return files
    if not path.is_file():
        raise DataError(f"prediction file {path} not found; check the path")
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path}: unknown prediction format '{path.suffix}'; use {', '.join(FORMATS)}")
    return [path]


def read_rows(path):
    """``[row dict]`` of one prediction file, in file order (cells as the format stores them).

    Raises:
        DataError: the file does not decode as its extension says (not UTF-8 text, a ``.xlsx``
            that is no workbook, rows that are not JSON objects), in one line naming the fix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".tsv":
            return _read_tsv(path)
        if suffix == ".xlsx":
            return _read_xlsx(path)
        if suffix == ".jsonl":
            return _read_jsonl(path)
        return _read_json(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 "
                        f"(VLMEvalKit and lmms-eval write UTF-8)") from None


def _read_tsv(path):
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t")
            header = [h.strip() for h in next(reader, [])]
            rows = [dict(zip(header, cells)) for cells in reader if any(c.strip() for c in cells)]
    finally:
        csv.field_size_limit(old)
    return rows


def _read_xlsx(path):
    try:
        import openpyxl
    except ImportError:
        raise DataError(f"{path}: reading .xlsx predictions needs openpyxl (pip install 'encslim[vlmeval]'); "
                        f"or save the file as .tsv") from None
    from zipfile import BadZipFile

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, KeyError, ValueError, OSError) as err:
        raise DataError(f"{path} is not an Excel workbook ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                        f"name the file after its real format (.tsv, .json, .jsonl) or re-save it from Excel") from None
    try:
        cells = list(book.active.iter_rows(values_only=True))
    finally:
        book.close()
    if not cells:
        return []
    header = ["" if h is None else str(h).strip() for h in cells[0]]
    return [dict(zip(header, row)) for row in cells[1:] if any(c is not None and str(c).strip() for c in row)]


def _read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


def _read_json(path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, (dict, list)) for v in data.values()):
        columns = {k: (list(v.values()) if isinstance(v, dict) else list(v)) for k, v in data.items()}
        n = {len(v) for v in columns.values()}
        if len(n) == 1:  # pandas' column orientation {column: {row: value}} or {column: [values]}
            return [{k: v[i] for k, v in columns.items()} for i in range(n.pop())]
    raise DataError(f"{path}: expected a list of prediction rows (or pandas' column orientation)")


__all__ = ["FORMATS", "prediction_files", "read_rows"]
