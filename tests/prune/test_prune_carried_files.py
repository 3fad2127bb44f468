"""What a pruned folder carries from its source: only files that describe the output model (issue 18
point 4, issue 21 point 2); everything else is left out and named in the manifest."""

import hashlib
import json
import shutil

from encslim.files import MANIFEST_NAME
from encslim.prune.surgery import prune

STALE = {"pytorch_model.bin": b"full unpruned weights", "loss.png": b"\x89PNG curve", "demo_meta.json": b"{}",
         "README.md": b"# the 3-encoder model", MANIFEST_NAME: b'{"stage": "finetune"}', "notes.txt": b"x"}


def test_pruned_folder_holds_only_files_of_the_output(tiny_model_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir("A1"), source)
    for name, data in STALE.items():
        (source / name).write_bytes(data)
    (source / "plots").mkdir()
    (source / "plots" / "frontier.png").write_bytes(b"png")
    (source / "modeling_custom.py").write_text("# remote code\n")
    (source / "chat_template.jinja").write_text("{{ messages }}\n")
    carried_before = sorted(p.name for p in source.iterdir() if p.name not in STALE and p.name != "plots")

    manifest = prune(source, ["siglip"], tmp_path / "out", verify=False, streaming=True)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert not set(STALE) - {MANIFEST_NAME} & set(names) and "plots" not in names
    assert manifest["left_out"] == sorted([*(set(STALE)), "plots/"])
    assert {"config.json", "processor_config.json", "modeling_custom.py", "chat_template.jinja"} <= set(names)
    assert any(n.startswith("tokenizer") for n in names)
    for name in carried_before:  # every model file came along (config/processor patched, weights rewritten)
        assert name in names, name
    # the manifest is the output's own, its digests are sha256 of the files
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk["stage"] == "prune"
    for name, digest in on_disk["files"].items():
        assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
    for name, digest in on_disk["source"]["files"].items():
        assert digest == hashlib.sha256((source / name).read_bytes()).hexdigest(), name
    assert on_disk["io"]["bytes_read"] == sum(p.stat().st_size for p in source.glob("*.safetensors"))
