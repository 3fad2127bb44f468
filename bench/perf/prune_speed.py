"""Streaming surgery speed and memory on a synthetic multi-GB checkpoint, against ``cp``.

Writes a native-layout checkpoint (three CLIP-L-sized encoders, channel-concat A1 fusion, a
~1.3B Llama; random bf16 tensors written straight to safetensors shards, no model built), then
alternates ``cp -r`` of the folder and ``encslim.prune.surgery.prune(..., streaming=True)``
dropping one encoder (deletes its tower, slices the projector), each followed by ``sync``.
Surgery runs in a child process that reports its peak RSS (``VmHWM``). Prints a table and JSON;
deletes every file it wrote unless ``--keep-files``.

    python -m encslim.bench.perf.prune_speed [--workdir DIR] [--rounds 4] [--layers 16]

Goals (issue 6): peak RSS <= 1.5 GB, wall time <= 2x ``cp`` of the same files.
"""

import argparse
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

from .models import build_config, saved_shapes, text, vision

CHILD = """
import json, sys, time
start = time.perf_counter()
import torch, transformers  # the fixed start-up cost, reported apart
import encslim.models.native
from encslim.prune.surgery import prune
imported = time.perf_counter()
manifest = prune(sys.argv[1], ["siglip"], sys.argv[2], streaming=True, verify=False, max_shard_size="1GB")
done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"import_s": imported - start, "surgery_s": done - imported,
                  "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024,
                  "bytes_after": manifest["summary"]["bytes_after"]}))
"""


def synthetic_config(layers):
    """A native A1 config: 3 x CLIP-L/14 (224 px) + a Llama with ``layers`` layers of width 2560."""
    clip_l = vision("clip", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=224)
    llm = text(hidden_size=2560, intermediate_size=6912, num_hidden_layers=layers, num_attention_heads=20,
               num_key_value_heads=20, vocab_size=32000, max_position_embeddings=2048)
    return build_config({n: (clip_l, 224) for n in ("clip", "siglip", "dinov2")}, llm, grid=16, image_token_id=3)


def write_synthetic(folder, layers, seed=0):
    """Write config.json and random bf16 shards (1 GB each) of the saved native layout; returns bytes."""
    from encslim.prune.checkpoint import OutTensor, write_checkpoint

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


def time_surgery(src, dst):
    _sync()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst)], check=True, capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _sync()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def time_sha256(folder):
    """Seconds to sha256 every file of ``folder`` on one thread (what the manifest costs, alone)."""
    from encslim.files import sha256_file

    start = time.perf_counter()
    for path in sorted(Path(folder).glob("*.safetensors")):
        sha256_file(path)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp folder in /tmp)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--layers", type=int, default=16, help="Llama layers (16 -> about 4.7 GB)")
    parser.add_argument("--keep-files", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="encslim-prune-speed-", dir=args.workdir))
    try:
        src = work / "source"
        start = time.perf_counter()
        size = write_synthetic(src, args.layers)
        print(f"synthetic checkpoint: {size / 1e9:.2f} GB in {len(list(src.glob('*.safetensors')))} shards "
              f"(written in {time.perf_counter() - start:.1f} s)")
        rows = []
        for r in range(args.rounds):  # alternate the order: whoever runs second meets the other's writeback
            timings = {}
            for op in (("cp", "surgery") if r % 2 == 0 else ("surgery", "cp")):
                dst = work / f"{op}{r}"
                time.sleep(2)
                timings[op] = time_cp(src, dst) if op == "cp" else time_surgery(src, dst)
                if op == "surgery":
                    timings["sha256_alone_s"] = time_sha256(src) + time_sha256(dst)
                shutil.rmtree(dst)
                _sync()
            surgery, cp_s = timings["surgery"], timings["cp"]
            rows.append({"cp_s": cp_s, **surgery, "sha256_alone_s": timings["sha256_alone_s"],
                         "order": "cp first" if r % 2 == 0 else "surgery first", "ratio": surgery["wall_s"] / cp_s,
                         "ratio_without_startup": (surgery["wall_s"] - surgery["import_s"]) / cp_s})
            print(f"round {r} ({rows[-1]['order']}): cp {cp_s:.2f} s | surgery {surgery['wall_s']:.2f} s "
                  f"(start-up imports {surgery['import_s']:.2f} s) | ratio {rows[-1]['ratio']:.2f}x "
                  f"({rows[-1]['ratio_without_startup']:.2f}x without start-up) | peak RSS "
                  f"{surgery['peak_rss_bytes'] / 2**30:.2f} GiB | sha256 of source+output alone "
                  f"{timings['sha256_alone_s']:.2f} s", flush=True)
        ratios = sorted(row["ratio"] for row in rows)
        summary = {"checkpoint_bytes": size, "output_bytes": rows[0]["bytes_after"], "rounds": rows,
                   "median_ratio": statistics.median(ratios), "best_ratio": ratios[0],
                   "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in rows),
                   "goals": {"peak_rss_bytes": 1.5 * 2**30, "ratio": 2.0}}
        print(json.dumps(summary, indent=2))
        return summary
    finally:
        if not args.keep_files:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
