"""Streaming surgery speed and memory on a synthetic multi-GB checkpoint, against ``cp``.

Writes a native-layout checkpoint (three CLIP-L-sized encoders, channel-concat A1 fusion, a
~1.3B Llama; random bf16 tensors written straight to safetensors shards, no model built), then
alternates ``cp -r`` of the folder and ``encslim.prune.surgery.prune(..., streaming=True, verify=False)``
dropping one encoder (deletes its tower, slices the projector), each followed by ``sync``, once per
``--modes`` entry: ``threads`` (reading, both digests and writing overlap on worker threads, the
default) and ``sequential`` (all on one thread). Surgery runs in a child process that reports its
peak RSS (``VmHWM``), its start-up (imports: neither torch nor transformers, both reported),
the one-pass copy's own time, and the bytes it read and wrote: counted by the executor, and from
``/proc/self/io`` (``rchar``/``wchar``: every read/write call, imports included; ``read_bytes``/
``write_bytes``: what reached the disk, 0 reads when the source sits in the page cache, as it
does for ``cp`` here). Prints a table and JSON; deletes every file it wrote unless ``--keep-files``.

    python -m encslim.bench.perf.prune_speed [--workdir DIR] [--rounds 4] [--layers 16] [--modes threads,sequential]

Ratios to ``cp`` are given with the child's whole wall time (interpreter and imports included) and
without its start-up imports; bytes read/written are per byte of the checkpoint's files.

Goals (issue 19): median wall <= 1.3x ``cp``, peak RSS <= 1 GiB, bytes read per checkpoint byte <= 1.05.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import arguments
from .models import build_config, saved_shapes, text, vision

CHILD = """
import json, sys, time
start = time.perf_counter()
from encslim.models import shards as checkpoint
from encslim.prune.surgery import prune  # torch-free, as everything the streaming --no-verify path imports
imported = time.perf_counter()
checkpoint.STREAM_THREADS = sys.argv[3] == "threads"
manifest = prune(sys.argv[1], ["siglip"], sys.argv[2], streaming=True, verify=False, max_shard_size="1GB")
done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
io = dict(line.split(":", 1) for line in open("/proc/self/io"))
print(json.dumps({"import_s": imported - start, "prune_s": done - imported, "pass_s": manifest["io"]["seconds"],
                  "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024, "executor_io": manifest["io"],
                  "proc_io": {k: int(v) for k, v in io.items()}, "bytes_after": manifest["summary"]["bytes_after"],
                  "sys_modules_torch": "torch" in sys.modules,
                  "sys_modules_transformers": "transformers" in sys.modules}))
"""
MODES = ("threads", "sequential")  # reading, digests and writes overlapped on threads / all on one thread


def synthetic_config(layers):
    """A native A1 config: 3 x CLIP-L/14 (224 px) + a Llama with ``layers`` layers of width 2560."""
    clip_l = vision("clip", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=224)
    llm = text(hidden_size=2560, intermediate_size=6912, num_hidden_layers=layers, num_attention_heads=20,
               num_key_value_heads=20, vocab_size=32000, max_position_embeddings=2048)
    return build_config({n: (clip_l, 224) for n in ("clip", "siglip", "dinov2")}, llm, grid=16, image_token_id=3)


def write_synthetic(folder, layers, seed=0):
    """Write config.json and random bf16 shards (1 GB each) of the saved native layout; returns bytes."""
    from encslim.models.shards import OutTensor, write_checkpoint

    config = synthetic_config(layers)
    config.save_pretrained(folder)
    shapes = saved_shapes(config)
    tensors = [OutTensor(k, "BF16", tuple(s), "copy") for k, s in shapes.items()]
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(32 << 20, dtype=np.float32) * 0.02).view(np.uint16)[1::2].copy().view(np.uint8)

    def produce(tensor, writer):  # bf16 = the upper half of fp32 normals, from a random pool offset
        left = tensor.nbytes
        while left:
            start = int(rng.integers(0, len(pool) // 2)) & ~1
            n = min(left, len(pool) - start)
            writer.write(pool[start: start + n])
            left -= n

    write_checkpoint(folder, tensors, produce, max_shard_size=10**9)
    return sum(t.nbytes for t in tensors)


def _sync():
    subprocess.run(["sync"], check=True)


def time_cp(src, dst):
    _sync()
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    _sync()
    return time.perf_counter() - start


def time_surgery(src, dst, mode="threads"):
    _sync()
    start = time.perf_counter()  # wall from process start: interpreter, imports, planning, the pass, manifest
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), mode], check=True, capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _sync()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    result["mode"] = mode
    return result


def _row(surgery, cp_s, files_bytes, order):
    io, proc = surgery["executor_io"], surgery["proc_io"]
    return {"cp_s": cp_s, **surgery, "order": order,
            "ratio": surgery["wall_s"] / cp_s,
            "ratio_without_startup": (surgery["wall_s"] - surgery["import_s"]) / cp_s,
            "ratio_pass_only": surgery["pass_s"] / cp_s,
            "read_per_byte": io["bytes_read"] / files_bytes,
            "written_per_byte": io["bytes_written"] / files_bytes,
            "rchar_per_byte": proc["rchar"] / files_bytes, "wchar_per_byte": proc["wchar"] / files_bytes,
            "disk_read_per_byte": proc["read_bytes"] / files_bytes,
            "disk_write_per_byte": proc["write_bytes"] / files_bytes}


def parse_args(argv=None):
    """The script's options; a missing ``--workdir`` or an unknown mode is one line, exit 2."""
    parser = arguments.parser(__doc__, "prune_speed")
    parser.add_argument("--workdir", type=arguments.folder, default=None,
                        help="an existing folder to write into (default: a temp folder in /tmp)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--layers", type=int, default=16, help="Llama layers (16 -> about 4.7 GB)")
    parser.add_argument("--modes", default="threads,sequential",
                        help="surgery modes per round, comma-separated: threads (reads, digests and writes overlap "
                             "on worker threads) and/or sequential (one thread); the first is the headline")
    parser.add_argument("--keep-files", action="store_true")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes takes {', '.join(MODES)}")
    return args


def run_rounds(work, src, modes, rounds, files_bytes):
    """Alternate ``cp`` and surgery in each mode, ``rounds`` times; whoever runs second meets the other's writeback.

    Returns:
        (rows, cps): per mode, one :func:`_row` per round; the ``cp`` seconds of each round.
    """
    rows = {mode: [] for mode in modes}
    cps = []
    for r in range(rounds):
        ops = ["cp", *modes] if r % 2 == 0 else [*modes, "cp"]
        timings = {}
        for op in ops:
            dst = work / f"{op}{r}"
            time.sleep(2)
            timings[op] = time_cp(src, dst) if op == "cp" else time_surgery(src, dst, op)
            shutil.rmtree(dst)
            _sync()
        cps.append(timings["cp"])
        for mode in modes:
            row = _row(timings[mode], timings["cp"], files_bytes, "cp first" if r % 2 == 0 else "surgery first")
            rows[mode].append(row)
            print(_round_line(r, mode, timings["cp"], row), flush=True)
    return rows, cps


def _round_line(r, mode, cp_s, row):
    return (f"round {r} ({row['order']}, {mode}): cp {cp_s:.2f} s | surgery {row['wall_s']:.2f} s "
            f"(start-up imports {row['import_s']:.2f} s, one pass {row['pass_s']:.2f} s) | ratio "
            f"{row['ratio']:.2f}x ({row['ratio_without_startup']:.2f}x without start-up, "
            f"{row['ratio_pass_only']:.2f}x the pass alone) | peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB"
            f" | read/written per byte {row['read_per_byte']:.3f}/{row['written_per_byte']:.3f} (syscalls "
            f"{row['rchar_per_byte']:.3f}/{row['wchar_per_byte']:.3f}, disk {row['disk_read_per_byte']:.3f}/"
            f"{row['disk_write_per_byte']:.3f}) | torch imported: {row['sys_modules_torch']}")


def summarise(mode_rows):
    """Medians, extremes and imports over one mode's rounds."""
    def median(name):
        return statistics.median(row[name] for row in mode_rows)

    return {"median_surgery_s": median("wall_s"), "median_import_s": median("import_s"),
            "median_pass_s": median("pass_s"), "median_ratio": median("ratio"),
            "best_ratio": min(r["ratio"] for r in mode_rows),
            "median_ratio_without_startup": median("ratio_without_startup"),
            "median_ratio_pass_only": median("ratio_pass_only"),
            "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in mode_rows),
            "read_per_byte_max": max(r["read_per_byte"] for r in mode_rows),
            "written_per_byte_max": max(r["written_per_byte"] for r in mode_rows),
            "torch_imported": any(r["sys_modules_torch"] for r in mode_rows),
            "transformers_imported": any(r["sys_modules_transformers"] for r in mode_rows)}


def _summary_line(summary):
    return "summary: " + "; ".join(
        f"{mode}: median {s['median_surgery_s']:.2f} s = {s['median_ratio']:.2f}x cp "
        f"({s['median_ratio_without_startup']:.2f}x without start-up), peak RSS "
        f"{s['peak_rss_bytes_max'] / 2**30:.2f} GiB, read/written per byte {s['read_per_byte_max']:.3f}/"
        f"{s['written_per_byte_max']:.3f}" for mode, s in summary["modes"].items()) + (
        f"; cp median {summary['median_cp_s']:.2f} s")


def main(argv=None):
    """Write the synthetic checkpoint, time the rounds, print the table and the JSON summary (returned)."""
    args = parse_args(argv)
    modes = args.modes
    work = Path(tempfile.mkdtemp(prefix="encslim-prune-speed-", dir=args.workdir))
    try:
        src = work / "source"
        start = time.perf_counter()
        size = write_synthetic(src, args.layers)
        print(f"synthetic checkpoint: {size / 1e9:.2f} GB in {len(list(src.glob('*.safetensors')))} shards "
              f"(written in {time.perf_counter() - start:.1f} s)")
        files_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        rows, cps = run_rounds(work, src, modes, args.rounds, files_bytes)
        head = rows[modes[0]]
        summary = {"checkpoint_bytes": size, "checkpoint_file_bytes": files_bytes,
                   "output_bytes": head[0]["bytes_after"], "median_cp_s": statistics.median(cps), "mode": modes[0],
                   **summarise(head), "modes": {mode: summarise(rows[mode]) for mode in modes}, "rounds": rows,
                   "goals": {"peak_rss_bytes": 2**30, "ratio": 1.3, "read_per_byte": 1.05}}
        print(_summary_line(summary))
        print(json.dumps(summary, indent=2))
        return summary
    finally:
        if not args.keep_files:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
