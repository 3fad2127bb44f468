"""Writing output folders safely: atomically (temp folder, then rename) and never over input."""

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError, OutputExistsError


def check_output_path(out, overwrite=False, inputs=()):
    """Refuse an existing output (unless ``overwrite``) and an output inside or equal to an input."""
    out = Path(out).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ConfigError(f"output {out} overlaps the input {src}; choose an output folder outside it")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    return out


@contextlib.contextmanager
def atomic_output_dir(out, overwrite=False, inputs=()):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    On any error the temporary folder is deleted and ``out`` is left as it was.
    """
    out = check_output_path(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
