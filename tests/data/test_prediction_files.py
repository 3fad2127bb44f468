"""Prediction files that do not decode as their extension says: one line, exit 2, nothing written."""

import json

import pytest

from ..conftest import run_main


def _good_jsonl(path):
    rows = [{"doc_id": i, "target": "red", "filtered_resps": ["red"], "doc": {"question": "colour?", "category": "c"}}
            for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CASES = {
    # name: (file name, bytes, what the message must say)
    "latin1-tsv": ("m_set.tsv", "index\tprediction\tanswer\n1\tcaf\u00e9\tcaf\u00e9\n".encode("latin-1"),
                   "is not UTF-8 text"),
    "latin1-jsonl": ("samples_t.jsonl", '{"doc_id": 0, "target": "caf\u00e9"}\n'.encode("latin-1"), "is not UTF-8 text"),
    "text-named-xlsx": ("m_set.xlsx", b"index\tprediction\tanswer\n1\tred\tred\n", "is not an Excel workbook"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_undecodable_prediction_file_is_one_line(case, tmp_path, capsys):
    name, data, says = CASES[case]
    bad = tmp_path / "masked" / name
    bad.parent.mkdir()
    bad.write_bytes(data)
    full = _good_jsonl(tmp_path / "samples_t.jsonl")
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "rank", "--predictions", f"full={full}", "--predictions", f"masked:a={bad}",
                            "--out", out, "--bootstrap", "10")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert str(bad) in lines[0] and says in lines[0]
    assert bad.read_bytes() == data  # the input is left as it was
    assert not out.exists()  # nothing written
