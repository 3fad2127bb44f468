"""Stale build locks of C++ extensions (DeepSpeed's ``fused_adam``...), found before a run that may compile one.

torch compiles an extension in ``<root>/<name>/`` and guards the build with the file ``<root>/<name>/lock``
(``torch.utils.file_baton.FileBaton``): created exclusively, held open by the building process, removed when the
build ends. A build killed half-way (Ctrl-C, a timeout) leaves the file behind, and every later process that needs
the extension waits for it to disappear, forever and without a word. A lock is stale when no living process holds
it open; :func:`check_build_locks` finds such files through ``/proc`` and stops with the fix instead.
"""

import os
import sys
from pathlib import Path

from ..errors import BuildLockError

LOCK_NAME = "lock"


def extensions_root():
    """The folder torch builds extensions in, computed as ``torch.utils.cpp_extension`` does but without creating it.

    Returns:
        ``$TORCH_EXTENSIONS_DIR`` when set, else torch's per-user cache folder with its subfolder for this Python
        and accelerator (``~/.cache/torch_extensions/py311_cpu``, ``.../py311_cu121``...).
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return Path(root)
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def stale_locks(root=None):
    """Build locks under ``root`` that no living process holds.

    A lock owned by another user is left out unless this process runs as root (their processes cannot be
    inspected, so it may well be held); so is every lock where ``/proc`` does not exist.

    Args:
        root: the extensions folder (default :func:`extensions_root`).

    Returns:
        sorted list of lock file paths (empty when there is none, or when it cannot be told).
    """
    root = Path(root) if root is not None else extensions_root()
    if not root.is_dir() or not os.path.isdir("/proc/self/fd"):
        return []
    uid = os.geteuid()
    locks = [p for p in root.glob(f"*/{LOCK_NAME}") if p.is_file() and (uid == 0 or p.stat().st_uid == uid)]
    if not locks:
        return []
    held = _held(locks)
    # a build that ends between the listing and the scan closes its lock before removing it: not stale
    return sorted(p for p in locks if p not in held and p.exists())


def _held(paths):
    """The subset of ``paths`` that some process has open (from the ``/proc/<pid>/fd`` links)."""
    wanted = {os.path.realpath(p): p for p in paths}
    held = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in wanted:
                held.add(wanted[target])
    return held


def check_build_locks(root=None):
    """Stop before a run that may compile an extension if a stale build lock would make it wait forever.

    Args:
        root: the extensions folder (default :func:`extensions_root`).

    Raises:
        BuildLockError: one line naming the lock file(s) and how to clear them.
    """
    locks = stale_locks(root)
    if locks:
        names = " ".join(str(p) for p in locks)
        raise BuildLockError(f"stale C++ extension build lock {names}: an interrupted build left it and no process "
                             f"holds it, so the next build would wait on it forever; delete it (rm {names}) or set "
                             "TORCH_EXTENSIONS_DIR to an empty folder, then run again")
