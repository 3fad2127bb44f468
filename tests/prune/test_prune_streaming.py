"""The one-pass streaming executor: byte-identical to the in-memory one for every plan operation, digests
equal to sha256 of the files, one read per source byte, and no torch/transformers on its import path."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from encslim.models.plan import Delete, Fold, RemovalPlan, Slice, check_plan
from encslim.models import shards as checkpoint_module
from encslim.models.folder import Checkpoint
from encslim.models.shards import OutTensor, write_checkpoint
from encslim.models.executor import execute_plan

# key -> (dtype, shape); bf16 and f16 are raw 16-bit words to the streaming executor
TENSORS = {
    "tower.a.weight": ("BF16", (6, 5)),
    "tower.a.bias": ("F32", (6,)),
    "tower.b.weight": ("F16", (4, 3, 2)),
    "tower.b.steps": ("I64", (3,)),
    "proj.weight": ("BF16", (8, 12)),
    "proj.bias": ("F32", (12,)),
    "aligner.v.weight": ("F32", (4, 3)),
    "aligner.h.bias": ("F32", (2, 3)),
    "head.flag": ("BOOL", (5,)),
    "head.bytes": ("U8", (7, 2)),
    "lm.embed": ("BF16", (16, 4)),
    "lm.empty": ("F32", (0, 4)),
}


def _write_source(folder, max_shard_size=200):
    """A tiny checkpoint of random bytes (several shards) of the dtypes above."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors = [OutTensor(k, d, s, "copy") for k, (d, s) in TENSORS.items()]

    def produce(tensor, writer):
        raw = rng.integers(0, 256, tensor.nbytes, dtype=np.uint8)
        if tensor.dtype == "BOOL":
            raw %= 2
        if tensor.dtype in ("F32", "F16", "BF16"):  # finite values (no NaN payloads to compare)
            raw = (rng.standard_normal(tensor.nbytes // 4 + 1, dtype=np.float32)).view(np.uint8)[: tensor.nbytes]
            raw = raw.copy()
            if tensor.dtype == "F16":
                raw = rng.standard_normal(tensor.nbytes // 2).astype(np.float16).view(np.uint8)
        writer.write(np.ascontiguousarray(raw))

    write_checkpoint(folder, tensors, produce, max_shard_size)
    return folder


PLANS = {
    "delete": dict(delete_keys=[Delete("tower.a.", "a"), Delete("head.flag", "a", False)]),
    "slice": dict(slices=[Slice("proj.weight", 1, 12, ((0, 4), (8, 12))), Slice("proj.bias", 0, 12, ((2, 5),)),
                          Slice("tower.b.weight", 1, 3, ((0, 1), (2, 3)))]),
    "fold": dict(folds=[Fold("aligner.linear.weight", 0, ({"zeros": [2, 3]}, {"key": "aligner.v.weight"}), "a"),
                        Fold("aligner.linear.bias", 0, ({"key": "aligner.h.bias"}, {"zeros": [1, 3]}), "a")]),
    "rename": dict(renames={"head.bytes": "head.raw", "lm.embed": "lm.embed_tokens"}),
    "prefix_rename": dict(delete_keys=[Delete("tower.a.", "a")], prefix_renames={"tower.b.": "towers.0.", "lm.": "model."}),
}
PLANS["all"] = {k: v for spec in PLANS.values() for k, v in spec.items()}
PLANS["all"]["delete_keys"] = PLANS["delete"]["delete_keys"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("threads", [True, False], ids=["threads", "sequential"])
@pytest.mark.parametrize("max_shard_size", [10**9, 150])
@pytest.mark.parametrize("op", list(PLANS))
def test_streaming_output_is_byte_identical_to_the_in_memory_executor(op, max_shard_size, threads, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(checkpoint_module, "STREAM_THREADS", threads)
    monkeypatch.setattr(checkpoint_module, "STREAM_WRITEBACK_BYTES", 64)  # early writeback on every few pieces
    source = _write_source(tmp_path / "source")
    checkpoint = Checkpoint.open(source)
    assert len(checkpoint.files) > 1
    plan = RemovalPlan(model_type="x", fusion_class="A1", slots=["a", "b"], drop=["a"], **PLANS[op])
    check_plan(plan, checkpoint.shapes())
    results = {}
    for streaming in (True, False):
        out = tmp_path / f"out-{streaming}"
        out.mkdir()
        written, src_digests, io = execute_plan(plan, checkpoint, out, streaming=streaming,
                                                max_shard_size=max_shard_size)
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert set(written) == set(files)
        assert written == {name: _sha(out / name) for name in files}  # digests = sha256 of the files
        assert src_digests == {p.name: _sha(p) for p in checkpoint.files}
        results[streaming] = files, io
    (stream_files, stream_io), (memory_files, _) = results[True], results[False]
    assert stream_files == memory_files  # byte for byte, headers and index included
    total = sum(p.stat().st_size for p in checkpoint.files)
    assert stream_io["bytes_read"] == total  # every source byte read once, none twice
    assert stream_io["bytes_written"] == sum(len(b) for b in stream_files.values())
    if max_shard_size == 150:
        assert len([n for n in stream_files if n.endswith(".safetensors")]) > 1


def test_streaming_digests_cover_bytes_no_tensor_owns(tmp_path):
    """A source with a gap between tensors (legal safetensors): hashed in full, gap not copied."""
    folder = tmp_path / "gap"
    folder.mkdir()
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
              "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"AAAAxxxxBBBB")
    checkpoint = Checkpoint.open(folder)
    plan = RemovalPlan(model_type="x", fusion_class="A1", slots=["a"], drop=[])
    out = tmp_path / "out"
    out.mkdir()
    written, src, io = execute_plan(plan, checkpoint, out, streaming=True)
    assert src == {"model.safetensors": _sha(path)} and io["bytes_read"] == path.stat().st_size
    assert written == {"model.safetensors": _sha(out / "model.safetensors")}
    assert (out / "model.safetensors").read_bytes().endswith(b"AAAABBBB")


def test_streaming_executor_imports_neither_torch_nor_transformers(tmp_path):
    source = _write_source(tmp_path / "source")
    code = (
        "import sys\n"
        "from encslim.models.plan import Delete, RemovalPlan, Slice\n"
        "from encslim.models.folder import Checkpoint\n"
        "from encslim.models.executor import execute_plan\n"
        f"c = Checkpoint.open({str(source)!r})\n"
        "plan = RemovalPlan(model_type='x', fusion_class='A1', slots=['a', 'b'], drop=['a'],\n"
        "                   delete_keys=[Delete('tower.a.', 'a')], slices=[Slice('proj.weight', 1, 12, ((0, 4),))])\n"
        f"execute_plan(plan, c, {str(tmp_path / 'out')!r}, streaming=True)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors.torch') if m in sys.modules))\n"
    )
    (tmp_path / "out").mkdir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
