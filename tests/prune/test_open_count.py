"""A streaming ``encslim prune --no-verify`` reads each source file once: config.json once, each shard once,
each side file once (counted with an audit hook on the ``open`` event, which sees ``open``, ``io.open`` and
``os.open`` alike); ``--dry-run`` imports neither torch nor transformers."""

import json
import shutil
import subprocess
import sys
from collections import Counter

from encslim.models.folder import Checkpoint
from encslim.models.shards import OutTensor, write_checkpoint

COUNT_OPENS = """
import json, os, sys
source = os.path.realpath(sys.argv[1])
opens = []

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if os.path.dirname(path) == source:
            opens.append(os.path.basename(path))

sys.addaudithook(hook)
from encslim.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exit_:
    assert not exit_.code, exit_.code
print(json.dumps(opens))
"""


def _sharded_copy(source, dest, max_shard_size):
    """A copy of the model folder ``source`` whose weights are re-saved in shards of ``max_shard_size`` bytes,
    plus a file that describes the source only (left out of the pruned folder, hashed for the manifest)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    checkpoint = Checkpoint.open(source)
    tensors = [OutTensor(k, t.dtype, t.shape, "copy", t) for k, t in checkpoint.tensors.items()]
    raw = (source / "model.safetensors").read_bytes()
    write_checkpoint(dest, tensors, lambda t, w: w.write(raw[t.source.start: t.source.start + t.source.nbytes]),
                     max_shard_size)
    (dest / "NOTES.md").write_text("source notes\n")
    return dest


def test_streaming_prune_opens_each_source_file_once(tiny_model_dir, tmp_path):
    source = _sharded_copy(tiny_model_dir("A1"), tmp_path / "source", 20_000)
    shards = sorted(p.name for p in source.glob("*.safetensors"))
    assert len(shards) > 2
    out = tmp_path / "pruned"
    run = subprocess.run([sys.executable, "-c", COUNT_OPENS, str(source), "prune", str(source), "--drop", "siglip",
                          "--out", str(out), "--streaming", "--no-verify"], capture_output=True, text=True, check=True)
    opens = Counter(json.loads(run.stdout.strip().splitlines()[-1]))
    files = sorted(p.name for p in source.iterdir())
    assert {"config.json", "model.safetensors.index.json", "processor_config.json", "tokenizer.json",
            "NOTES.md", *shards} <= set(files)
    assert opens == Counter({name: 1 for name in files}), opens  # every file once: no second read of any
    manifest = json.loads((out / "encslim_manifest.json").read_text())
    assert sorted(manifest["source"]["files"]) == files and manifest["left_out"] == ["NOTES.md"]


def test_dry_run_imports_neither_torch_nor_transformers(tiny_model_dir):
    code = (
        "import sys\n"
        "from encslim.cli import main\n"
        f"main(['prune', {str(tiny_model_dir('A2', ('clip', 'siglip', 'convnext')))!r}, '--drop', 'siglip',"
        " '--dry-run'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors.torch') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "[]"
    assert any("siglip" in line for line in lines[:-1])  # the plan was printed
