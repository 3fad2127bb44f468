"""Removal plans: plain data saying how to turn a checkpoint into one without some encoder slots.

A plan is built from a model's config alone (by the family's adapter) and holds

* ``delete_keys``: tensors to delete, by exact key or key prefix, each credited to a slot;
* ``slices``: tensors to keep only some index ranges of, along one dimension (A1/A2 projectors);
* ``folds``: new tensors assembled from source tensors and zero blocks, e.g. the constant a
  removed branch leaves behind, folded into the next layer (A3, DeepSeek-VL hybrid);
* ``renames``: source key -> output key (when the output is another architecture);
* ``prefix_renames``: key prefix -> new prefix, applied after ``renames``: removing tower 1 of
  a ``ModuleList`` renumbers towers 2..n (Eagle's ``vision_towers.{i}``);
* ``config_patch`` / ``processor_patch``: JSON edit operations on ``config.json`` and the
  processor files, applied together with the weights;
* ``exact``: whether the pruned model computes exactly what the removal-masked model computed.

One executor applies plans (:mod:`encslim.models.executor`: in memory or streaming over shards,
used by ``encslim prune`` and ``encslim export`` alike); ``describe_plan`` reports one against a
checkpoint's header (the ``--dry-run`` view). The
adapters build plans, so the plan vocabulary lives with the models; each family's plan
builder is in its own family file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from ..errors import PlanError
from .masking import check_slot_names

JsonOp = Mapping[str, Any]  # one JSON edit operation (see :func:`apply_json_ops`)
Range = tuple[int, int]  # [start, stop)
Shape = Sequence[int]


class FoldPart(TypedDict, total=False):
    """One part of a :class:`Fold`: ``{"key": source key}`` or ``{"zeros": shape}``."""

    key: str
    zeros: Sequence[int]


@dataclass(frozen=True)
class Delete:
    """Delete ``key`` (``prefix=False``) or every key starting with it; credited to ``slot``."""

    key: str
    slot: str
    prefix: bool = True

    def matches(self, name: str) -> bool:
        """Whether tensor ``name`` is deleted by this entry."""
        return name.startswith(self.key) if self.prefix else name == self.key


@dataclass(frozen=True)
class Slice:
    """Keep index ranges ``keep`` of ``key`` along ``dim`` (whose size must be ``size``).

    ``removed`` maps each dropped slot to the ``[start, stop)`` range it owned.
    """

    key: str
    dim: int
    size: int
    keep: tuple[Range, ...]
    removed: dict[str, Range] = field(default_factory=dict)

    @property
    def kept_size(self) -> int:
        """Size of ``dim`` after the slice."""
        return sum(stop - start for start, stop in self.keep)


@dataclass(frozen=True)
class Fold:
    """Build tensor ``key`` by concatenating ``parts`` along ``dim``.

    Each part is ``{"key": source_key}`` or ``{"zeros": shape}`` (zeros in the sources' dtype).
    The source keys are consumed (not copied). ``slot`` is the dropped slot that causes the fold.
    """

    key: str
    dim: int
    parts: tuple[FoldPart, ...]
    slot: str
    why: str = ""

    @property
    def sources(self) -> list[str]:
        """The source keys the fold consumes, in order."""
        return [p["key"] for p in self.parts if "key" in p]


@dataclass
class RemovalPlan:
    """How to remove slots ``drop`` from a ``model_type`` checkpoint (see the module docstring)."""

    model_type: str
    fusion_class: str
    slots: list[str]
    drop: list[str]
    delete_keys: list[Delete] = field(default_factory=list)
    slices: list[Slice] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)
    prefix_renames: dict[str, str] = field(default_factory=dict)
    config_patch: list[JsonOp] = field(default_factory=list)
    processor_patch: dict[str, list[JsonOp]] = field(default_factory=dict)
    drop_files: list[str] = field(default_factory=list)
    exact: bool = True
    target_model_type: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.target_model_type = self.target_model_type or self.model_type

    @property
    def kept(self) -> list[str]:
        """The slots that stay, in order."""
        return [s for s in self.slots if s not in set(self.drop)]

    def is_deleted(self, key: str) -> bool:
        """Whether tensor ``key`` is deleted (by key or prefix)."""
        return any(d.matches(key) for d in self.delete_keys)

    def output_name(self, key: str) -> str:
        """The name ``key`` has in the output: exact renames first, then the longest matching prefix rename."""
        key = self.renames.get(key, key)
        for old in sorted(self.prefix_renames, key=len, reverse=True):
            if key.startswith(old):
                return self.prefix_renames[old] + key[len(old):]
        return key

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for manifests and ``--dry-run --json``)."""
        data = asdict(self)
        data["kept"] = self.kept
        return data


def channel_ranges(slots: Iterable[str], dims: Mapping[str, int],
                   drop: Iterable[str]) -> tuple[tuple[Range, ...], dict[str, Range]]:
    """Kept ``[start, stop)`` channel ranges (merged) and each dropped slot's range."""
    drop = set(drop)
    keep: list[Range] = []
    removed: dict[str, Range] = {}
    offset = 0
    for slot in slots:
        start, stop = offset, offset + dims[slot]
        offset = stop
        if slot in drop:
            removed[slot] = (start, stop)
        elif keep and keep[-1][1] == start:
            keep[-1] = (keep[-1][0], stop)
        else:
            keep.append((start, stop))
    return tuple(keep), removed


def check_drop(slots: Sequence[str], drop: Iterable[str]) -> list[str]:
    """Validate a drop list against a model's slots.

    Raises:
        PlanError: nothing to drop, an unknown slot (listing the valid ones), or every slot.
    """
    names = list(dict.fromkeys(drop))
    if not names:
        raise PlanError("no slot to drop; name at least one with --drop or use a selection policy")
    check_slot_names(slots, names, PlanError)
    if set(names) >= set(slots):
        raise PlanError(f"cannot remove every encoder ({', '.join(slots)}); keep at least one slot")
    return names


# ---------------------------------------------------------------------------- JSON patches
def apply_json_ops(data: Any, ops: Iterable[JsonOp]) -> Any:
    """Apply edit operations to a JSON document; returns a new document (the input is not changed).

    Operations (``path`` is dotted: ``image_processor.size``):

    * ``{"op": "set", "path": p, "value": v}`` (the parent of ``p`` must exist)
    * ``{"op": "delete", "path": p}``
    * ``{"op": "remove_items", "path": p, "field": f, "values": [...]}``: drop list items whose
      field ``f`` is in ``values``.

    An operation whose path is absent raises ``PlanError`` unless it has ``"optional": true``
    (a plan that does not fit the file would otherwise write a silently unpatched config).

    Raises:
        PlanError: an absent path of a required operation, or an unknown op.
    """
    data = copy.deepcopy(data)
    for op in ops:
        kind = op.get("op")
        if kind not in ("set", "delete", "remove_items"):
            raise PlanError(f"unknown JSON patch op {kind!r}; use set, delete or remove_items")
        *parents, last = op["path"].split(".")
        node = data
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        present = isinstance(node, dict) and (kind == "set" or last in node)
        if present and kind == "remove_items" and not isinstance(node[last], list):
            present = False
        if not present:
            if op.get("optional"):
                continue
            raise PlanError(f"JSON patch '{kind} {op['path']}': no such path in the file; the plan does not fit "
                            "this model's files (mark the operation optional if it may be absent)")
        if kind == "set":
            node[last] = copy.deepcopy(op["value"])
        elif kind == "delete":
            del node[last]
        else:
            node[last] = [item for item in node[last]
                          if not (isinstance(item, dict) and item.get(op["field"]) in op["values"])]
    return data


def json_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON documents: ``["- a.b: 1", "+ a.b: 2", ...]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                lines.append(f"- {sub}: {_short(old[key])}")
            elif key not in old:
                lines.append(f"+ {sub}: {_short(new[key])}")
            else:
                lines += json_diff(old[key], new[key], sub)
        return lines
    if isinstance(old, list) and isinstance(new, list) and old != new:
        named = all(isinstance(item, dict) and "name" in item for item in old + new)
        if named:  # lists of named entries (encoders): diff by name
            return _diff_named(old, new, path)
        if len(old) == len(new):
            return [line for i, (a, b) in enumerate(zip(old, new)) for line in json_diff(a, b, f"{path}[{i}]")]
    if old != new:
        return [f"- {path}: {_short(old)}", f"+ {path}: {_short(new)}"]
    return []


def _diff_named(old: list[dict[str, Any]], new: list[dict[str, Any]], path: str) -> list[str]:
    before, after = {i["name"]: i for i in old}, {i["name"]: i for i in new}
    lines: list[str] = []
    for name in list(before) + [n for n in after if n not in before]:
        sub = f"{path}[name={name}]"
        if name not in after:
            lines.append(f"- {sub}")
        elif name not in before:
            lines.append(f"+ {sub}: {_short(after[name])}")
        else:
            lines += json_diff(before[name], after[name], sub)
    return lines


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- plan vs checkpoint
def check_plan(plan: RemovalPlan, shapes: Mapping[str, Shape]) -> None:
    """Check a plan against a checkpoint's ``{key: shape}``; raise one PlanError listing problems."""
    problems: list[str] = []
    for delete in plan.delete_keys:
        if delete.prefix and not any(delete.matches(k) for k in shapes):
            problems.append(f"no tensor under '{delete.key}' although config.json lists slot '{delete.slot}'")
        elif not delete.prefix and delete.key not in shapes:
            problems.append(f"tensor '{delete.key}' of slot '{delete.slot}' is missing")
    for sl in plan.slices:
        shape = shapes.get(sl.key)
        if shape is None:
            problems.append(f"tensor '{sl.key}' is missing")
        elif len(shape) <= sl.dim or shape[sl.dim] != sl.size:
            problems.append(f"'{sl.key}' has shape {list(shape)}, expected size {sl.size} in dim {sl.dim}")
    for fold in plan.folds:
        problems += [f"tensor '{k}' is missing" for k in fold.sources if k not in shapes]
    kept = [k for k in shapes if not plan.is_deleted(k)]
    for old in plan.prefix_renames:
        if not any(plan.renames.get(k, k).startswith(old) for k in kept):
            problems.append(f"no kept tensor under '{old}' to rename")
    if problems:
        raise PlanError("checkpoint keys do not match config.json: " + "; ".join(problems[:5])
                        + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
                        + "; the weights belong to another model")


def fold_shape(fold: Fold, shapes: Mapping[str, Shape]) -> tuple[int, ...]:
    """Shape of a fold's output tensor, from its parts' shapes."""
    part_shapes = [tuple(shapes[p["key"]]) if "key" in p else tuple(p["zeros"]) for p in fold.parts]
    out = list(part_shapes[0])
    out[fold.dim] = sum(s[fold.dim] for s in part_shapes)
    for s in part_shapes:
        if len(s) != len(out) or any(a != b for i, (a, b) in enumerate(zip(s, out)) if i != fold.dim):
            raise PlanError(f"fold '{fold.key}': parts of shapes {part_shapes} cannot be concatenated "
                            f"along dim {fold.dim}")
    return tuple(out)


def describe_plan(plan: RemovalPlan, shapes: Mapping[str, Shape],
                  itemsizes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a plan removes from a checkpoint, computed from tensor shapes only.

    Args:
        plan: a :class:`RemovalPlan`.
        shapes: ``{key: shape}`` of the source checkpoint.
        itemsizes: ``{key: bytes per element}`` (default 4).

    Returns:
        a dict: ``params_before/after``, ``bytes_before/after``, ``removed_per_slot`` (``{slot:
        {"params", "bytes"}}``), ``deleted_tensors``, ``sliced`` and ``folded`` (key, shapes) lists.
    """
    sizes = itemsizes or {}

    def size(key: str) -> int:
        return sizes.get(key, 4)

    per_slot = {s: {"params": 0, "bytes": 0} for s in plan.drop}
    consumed = {k for fold in plan.folds for k in fold.sources}
    deleted = 0
    for key, shape in shapes.items():
        owner = next((d.slot for d in plan.delete_keys if d.matches(key)), None)
        if owner is not None and key not in consumed:
            per_slot[owner]["params"] += math.prod(shape)
            per_slot[owner]["bytes"] += math.prod(shape) * size(key)
            deleted += 1
    sliced: list[dict[str, Any]] = []
    for sl in plan.slices:
        shape = shapes[sl.key]
        row = math.prod(shape) // shape[sl.dim]
        for slot, (start, stop) in sl.removed.items():
            per_slot[slot]["params"] += row * (stop - start)
            per_slot[slot]["bytes"] += row * (stop - start) * size(sl.key)
        after = list(shape)
        after[sl.dim] = sl.kept_size
        sliced.append({"key": sl.key, "dim": sl.dim, "before": list(shape), "after": after})
    folded: list[dict[str, Any]] = []
    for fold in plan.folds:
        shape = fold_shape(fold, shapes)
        grown = math.prod(shape) - sum(math.prod(shapes[k]) for k in fold.sources)
        item = size(fold.sources[0]) if fold.sources else 4
        per_slot[fold.slot]["params"] -= grown
        per_slot[fold.slot]["bytes"] -= grown * item
        folded.append({"key": fold.key, "shape": list(shape), "from": fold.sources, "why": fold.why})
    params_before = sum(math.prod(s) for s in shapes.values())
    bytes_before = sum(math.prod(s) * size(k) for k, s in shapes.items())
    removed_params = sum(v["params"] for v in per_slot.values())
    removed_bytes = sum(v["bytes"] for v in per_slot.values())
    return {
        "params_before": params_before, "params_after": params_before - removed_params,
        "bytes_before": bytes_before, "bytes_after": bytes_before - removed_bytes,
        "removed_per_slot": per_slot, "deleted_tensors": deleted, "sliced": sliced, "folded": folded,
        "renamed": len([k for k in shapes if k not in consumed and not plan.is_deleted(k)
                        and plan.output_name(k) != k]),
    }
