"""The one strict key comparison every checker uses: :func:`key_problems` -> :class:`KeyProblems`.

A checkpoint's ``{key: shape}`` against a model's: missing, unexpected and mis-shaped keys, each
list sorted, phrased the same way wherever a load or a plan is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SHOWN_KEYS = 3  # keys named per kind of problem
Shape = Sequence[int | None]  # a ``None`` dimension (in an expected shape) matches any size
Mismatch = tuple[str, tuple[int | None, ...], tuple[int | None, ...]]  # (key, found shape, expected shape)


def _listed(keys: Iterable[str], shown: int = SHOWN_KEYS) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{', '.join(keys[:shown])}{more}"


@dataclass(frozen=True)
class KeyProblems:
    """What a checkpoint's keys contradict in a model's: each list sorted.

    ``mismatched`` holds ``(key, found shape, expected shape)``; ``tolerated_missing`` the expected keys
    the checkpoint lacks that the caller tolerates (it recomputes them).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    tolerated_missing: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def listed(self, missing_note: str = "") -> list[str]:
        """``["N missing key(s)<note>: a, b, c (+M more)", "N unexpected key(s): ...", "N mis-shaped key(s): ..."]``."""
        shaped = [f"{k} (checkpoint {list(found)}, model {list(want)})" for k, found, want in self.mismatched]
        groups: tuple[tuple[str, Sequence[str], str], ...] = (
            ("missing", self.missing, missing_note), ("unexpected", self.unexpected, ""), ("mis-shaped", shaped, ""))
        return [f"{len(keys)} {label} key(s){note}: {_listed(keys)}" for label, keys, note in groups if keys]

    def examples(self) -> list[str]:
        """``["N missing (e.g. a)", "N unexpected (e.g. b)", "N of another shape (e.g. c: [..] vs [..])"]``."""
        parts = [f"{len(keys)} {label} (e.g. {keys[0]})"
                 for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)) if keys]
        if self.mismatched:
            key, found, want = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} of another shape (e.g. {key}: {list(found)} vs {list(want)})")
        return parts


def _fits(found: Shape, want: Shape) -> bool:
    found, want = tuple(found), tuple(want)
    return len(found) == len(want) and all(w is None or f == w for f, w in zip(found, want))


def key_problems(expected: Mapping[str, Shape], found: Mapping[str, Shape], tolerated: re.Pattern[str] | None = None,
                 optional: Iterable[str] = ()) -> KeyProblems:
    """Compare a checkpoint's ``{key: shape}`` with a model's: the one strict key check.

    Args:
        expected: ``{key: shape}`` the model has; a ``None`` dimension matches any size.
        found: ``{key: shape}`` the checkpoint holds.
        tolerated: a compiled pattern; keys it ``search``-es may be missing or unexpected.
        optional: keys that may be missing (tied weights, keys ignored when absent).

    Returns:
        a :class:`KeyProblems` (false when the keys fit).
    """
    def ok(key: str) -> bool:
        return tolerated is not None and tolerated.search(key) is not None

    skipped = set(optional)
    absent = sorted(k for k in expected if k not in found and k not in skipped)
    return KeyProblems(
        missing=tuple(k for k in absent if not ok(k)),
        unexpected=tuple(sorted(k for k in found if k not in expected and not ok(k))),
        mismatched=tuple((k, tuple(found[k]), tuple(expected[k])) for k in sorted(found)
                         if k in expected and not _fits(found[k], expected[k])),
        tolerated_missing=tuple(k for k in absent if ok(k)),
    )
