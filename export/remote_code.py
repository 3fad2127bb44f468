"""``--format remote-code``: a native folder that loads without encslim installed.

The folder carries copies of encslim's self-contained configuration, modeling, processing and masking
files and an ``auto_map`` in ``config.json`` and ``processor_config.json``, so that::

    AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)

work with only torch and transformers installed. encslim itself never runs the shipped code with
``trust_remote_code``: it checks that the copies are self-contained (imports) and identical to
the code it loads the folder with, and compares the folder's logits with the source's.
"""

import ast
import json
import logging
import re
import sys
from pathlib import Path

from ..errors import ConfigError, VerificationError
from ..models.capabilities import supports_remote_code
from ..files import atomic_output_dir, check_output_path, sha256_file
from .compat import carry_slow_tokenizer, write_legacy_rope_keys
from .common import (check_logits, count_parameters, fail_unless_matched, load_source, max_abs_diff, probe_batch, probe_logits,
                     read_source, require_target)
from .finish import CardInputs, FormatInfo, LoadedSource, check_card_inputs, finish_folder

logger = logging.getLogger(__name__)

NEEDS = "a model whose family ships its code (the native family)"
# what the shipped files may import: the standard library, torch, transformers, numpy, PIL
ALLOWED_IMPORTS = {"torch", "transformers", "numpy", "PIL"}
# the folder is the same model saved again: stricter than provenance.VERIFY_TOLERANCE (the round trip is exact)
ATOL = 1e-5

HOW_TO_LOAD = """\
# needs only torch and transformers (encslim need not be installed)
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained("{name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
batch = processor(text=[processor.build_prompt("What is in the image?")], images=[image])
print(processor.batch_decode(model.generate(**batch, max_new_tokens=16)))
"""


RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b)", re.M)


def flatten_imports(text, source, files):
    """``text`` (the file ``source``) with each relative import of another shipped file rewritten to its
    shipped name (``from ...masking import`` -> ``from .masking import``); others are left as they are.

    Args:
        files: ``{shipped name: source file}`` of the whole export.
    """
    shipped = {Path(src).resolve(): Path(name).stem for name, src in files.items()}

    def flat(match):
        base = Path(source).resolve().parent
        for _ in range(len(match.group(2)) - 1):
            base = base.parent
        target = base.joinpath(*match.group(3).split(".")).with_suffix(".py") if match.group(3) else None
        stem = shipped.get(target) if target is not None else None
        return f"{match.group(1)}.{stem}{match.group(4)}" if stem else match.group(0)

    return RELATIVE_IMPORT.sub(flat, text)


def foreign_imports(text, shipped):
    """Modules a source text imports that a bare torch+transformers install lacks. Pure.

    Relative imports must name another shipped file (``shipped``: their module stems). Imports inside
    ``try: ... except ImportError`` are optional (the file runs without them; transformers'
    remote-code check skips them too).
    """
    tree = ast.parse(text)
    shipped = set(shipped)
    optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) and _catches_import_error(node)
                for stmt in node.body for inner in ast.walk(stmt)}
    bad = []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level != 1 or (node.module or "").split(".")[0] not in shipped:
                    bad.append("." * node.level + (node.module or ""))
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in ALLOWED_IMPORTS and top not in sys.stdlib_module_names:
                bad.append(name)
    return bad


def _catches_import_error(node):
    """Whether a ``try`` statement has a handler for ``ImportError`` (or ``ModuleNotFoundError``)."""
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds):
            return True
    return False


def ship_code(folder, code):
    """Write the family's code files (``code``: a :class:`~encslim.models.capabilities.RemoteCode`) into
    ``folder``, flat, their relative imports rewritten to the shipped names; return ``{file: sha256}``.

    Raises:
        VerificationError: a file imports something a plain transformers install lacks.
    """
    hashes = {}
    stems = {Path(name).stem for name in code.files}
    for name, source in code.files.items():
        text = flatten_imports(Path(source).read_text(encoding="utf-8"), source, code.files)
        bad = foreign_imports(text, stems)
        if bad:
            raise VerificationError(f"{name} imports {', '.join(bad)}, so it cannot ship as remote code; keep the "
                                    f"family's modeling code self-contained (torch and transformers only)")
        (Path(folder) / name).write_text(text, encoding="utf-8")
        hashes[name] = sha256_file(Path(folder) / name)
    return hashes


def add_auto_map(folder, code):
    """Write the ``auto_map`` entries of ``code`` into ``config.json`` and ``processor_config.json``."""
    for file_name, auto_map in (("config.json", code.model_auto_map),
                                ("processor_config.json", code.processor_auto_map)):
        path = Path(folder) / file_name
        if not auto_map or not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        data["auto_map"] = dict(auto_map)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_remote_code(model_dir, out, *, overwrite=False, max_shard_size="5GB", dtype="auto", ranking=None,
                       bench=None, atol=ATOL):
    """Export a native model as a folder that loads with ``trust_remote_code=True`` and no encslim.

    Args:
        model_dir: a native encslim folder.
        out: output folder (written atomically).
        overwrite, max_shard_size, dtype, ranking, bench: as for :func:`encslim.export.hf_folder.export_hf`.
        atol: largest allowed logit difference between the folder and the source.

    Returns:
        The manifest dict.

    Raises:
        ConfigError: not a native model. VerificationError: the folder does not reproduce the source.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    require_target(source, "remote-code", NEEDS, "remote code")
    if not supports_remote_code(source.adapter):
        raise ConfigError(f"{model_dir}: its family ships no modeling code; export it as --format hf instead")
    code = source.adapter.remote_code()
    model, processor = load_source(source, dtype)
    batch = probe_batch(source.adapter, processor)
    reference = probe_logits(source.adapter, model, batch)
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_dir]) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        hashes = ship_code(tmp, code)
        add_auto_map(tmp, code)
        write_legacy_rope_keys(tmp)
        carry_slow_tokenizer(source.path, tmp)
        reloaded, _ = source.adapter.load(str(tmp), dtype=model.dtype)
        logits = probe_logits(source.adapter, reloaded.eval(), batch)
        records = [check_logits("logits", max_abs_diff(reference, logits), atol)]
        fail_unless_matched(records, "the remote-code folder")
        fmt = FormatInfo("remote-code", details={"code_files": hashes, "auto_map": dict(code.model_auto_map)},
                         notes=("The modeling code ships in this folder; read it before loading with "
                                "trust_remote_code=True.",))
        manifest = finish_folder(
            tmp, LoadedSource(source, model, processor), fmt, verification=records,
            how_to_load=HOW_TO_LOAD.format(name=out), parameters=count_parameters(model),
            card=CardInputs(ranking, bench),
        )
    logger.info("exported %s -> %s (format remote-code)", model_dir, out)
    return manifest


__all__ = ["export_remote_code", "ship_code", "add_auto_map", "flatten_imports", "foreign_imports"]
