"""`encslim inspect` on a real-shape Eagle-X5-7B folder reads headers only: seconds, well under 1 GB.

The folder's safetensors files are sparse: each holds its real JSON header (dtype, shape and
offsets of every key of the real model) and is then truncated to its full size, so the data region
is holes that cost no disk. A loader that reads the weights would need tens of GB.
"""

import json
import shutil
import subprocess
import sys
import time

import torch

from encslim.models.registry import adapter_for_config

VICUNA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
X5 = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
SHARDS = 4


def _real_x5_config(tiny):
    """The tiny folder's config.json with the real towers (no size overrides), input size and Vicuna-7B."""
    config = json.loads((tiny / "config.json").read_text())
    for key in ("eagle_tower_specs", "eagle_input_image_size"):
        config.pop(key, None)
    config.update(VICUNA_7B, mm_vision_tower=X5, mm_hidden_size=1024 + 3072 + 1024 + 1024 + 1536)
    return config


def _write_sparse_shards(folder, state):
    """bf16 safetensors shards of ``state``'s shapes: real headers, data regions left as holes."""
    keys = sorted(state)
    per_shard = -(-len(keys) // SHARDS)
    weight_map = {}
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key in keys[i * per_shard:(i + 1) * per_shard]:
            nbytes = state[key].numel() * 2
            header[key] = {"dtype": "BF16", "shape": list(state[key].shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[key] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            handle.truncate(8 + len(raw) + offset)
    total = sum(v.numel() * 2 for v in state.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))


# runs `encslim inspect --json` as its only child and prints that child's peak RSS (KiB) last on stderr:
# RUSAGE_CHILDREN of the test process itself would report the largest of every child the session ran
MEASURED = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "encslim.cli", "inspect", sys.argv[1], "--json"])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(proc.returncode)
"""


def test_inspect_real_shape_eagle_x5_reads_headers_only(tiny_eagle_dir, tmp_path):
    tiny = tiny_eagle_dir()
    folder = tmp_path / "eagle-x5-7b"
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    (folder / "config.json").write_text(json.dumps(_real_x5_config(tiny)))
    adapter = adapter_for_config(json.loads((folder / "config.json").read_text()))  # no weights yet
    model = adapter.empty_model(adapter.read_config(folder))
    state = model.state_dict()
    _write_sparse_shards(folder, state)
    buffers = {name for name, _ in model.named_buffers()}
    expected = sum(v.numel() for k, v in state.items() if k not in buffers)
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) > 17e9  # bf16 Eagle-X5-7B: ~18 GB
    del model, state

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURED, str(folder)], capture_output=True, text=True, timeout=600)
    peak_kib = int(proc.stderr.strip().splitlines()[-1])  # the inspect process's own peak, in KiB
    print(f"encslim inspect: {time.perf_counter() - start:.1f} s, peak RSS {peak_kib / 1024:.0f} MiB")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert peak_kib < 1 << 20, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert info["params_in_headers"] == expected == info["params_total"] and info["params_match"]
    assert 9.0e9 < expected < 9.1e9
    slots = {s["name"]: s for s in info["slots"]}
    assert list(slots) == X5.split(";")
    assert all(s["vision_flops"] > 1e11 for s in slots.values())
    parts = sum(s["params"] for s in slots.values()) + info["fusion"]["shared_params"] + info["llm"]["params"]
    assert parts == expected
    assert info["fusion"]["image_tokens"] == 1024 and slots["convnext-1024"]["feature_shape"] == [1024, 3072]
    assert torch.Size([4096, 7680]) == torch.Size([info["llm"]["hidden_size"],
                                                    sum(s["feature_shape"][1] for s in slots.values())])
