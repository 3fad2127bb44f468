"""Shared file I/O: the file names every stage agrees on, JSON reading with a useful error, sha256,
and writing output folders safely (atomically: temp folder, then rename; never over an input)."""

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, EncslimError, OutputExistsError

# file names shared by several stages (a stage's private files are named in that stage)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MANIFEST_NAME = "encslim_manifest.json"
RANKING_NAME = "ranking.json"
BENCH_NAME = "bench.json"
CARD_NAME = "README.md"
PROCESSOR_NAMES = ("processor_config.json", "preprocessor_config.json")
CHUNK_BYTES = 8 << 20


def read_json(path: str | os.PathLike[str], fix: str = "re-create it", error: type[EncslimError] = ConfigError) -> Any:
    """The JSON document in ``path``; ``error`` (an ``EncslimError``) naming the file and ``fix`` if it is
    missing or not JSON.

    Args:
        path: the file.
        fix: what the user should do, e.g. "re-run the step that wrote it".
        error: the ``EncslimError`` subclass to raise.
    """
    if not issubclass(error, EncslimError):
        raise TypeError("error must be an EncslimError subclass")
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from err


def check_output_path(out: str | os.PathLike[str], overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse an existing output (unless ``overwrite``) and an output inside or equal to an input."""
    resolved = Path(out).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if resolved == src or src in resolved.parents or resolved in src.parents:
            raise ConfigError(f"output {resolved} overlaps the input {src}; choose an output folder outside it")
    if resolved.exists() and not overwrite:
        raise OutputExistsError(f"{resolved} already exists; pass --overwrite to replace it or choose another --out")
    return resolved


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    The folder and everything in it get the modes the user's umask gives new files and folders (as ``mkdir`` and
    a new file would: 0755/0644 under umask 022), not the 0700 of the temporary folder nor the modes of copied
    sources. On any error the temporary folder is deleted and ``out`` is left as it was.
    """
    target = check_output_path(out, overwrite, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's umask: read from ``/proc/self/status`` where it is there, else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and everything under it the modes the umask gives new ones: folders and executable files
    ``0777 & ~umask``, other files ``0666 & ~umask``; symbolic links are left alone.

    Args:
        folder: a folder this process wrote (e.g. the temporary folder of :func:`atomic_output_dir`).
    """
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
            os.chmod(path, full & ~mask)


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read into one reused buffer (no allocation per chunk)."""
    digest, buffer = hashlib.sha256(), bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buffer)
            if not got:
                return digest.hexdigest()
            digest.update(view[:got])
