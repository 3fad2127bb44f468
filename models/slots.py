"""One slot set: which of a model's encoder slots are masked (and so which are kept).

Users name a set of slots in several spellings: a ``masked`` set (the adapters' API), a ``kept``
list (``Selection.kept``, subset tables), a ``drop`` list (``prune --drop``), the ``masked_slots``
key of a training batch, the keys of ``rank --predictions`` (``full``, ``masked:sam+clip``,
``kept:clip``) and ``masked=sam+clip`` of the lmms-eval model args. Each is read here, once, into
a :class:`SlotSet` bound to the model's ordered slot names, and checked once against them with the
one slot-name check of encslim (:func:`encslim.models.masking.check_slot_names`): an unknown slot
is a one-line error naming the valid ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from ..errors import ConfigError, EncslimError
from .masking import check_slot_names

Kind = Literal["full", "masked", "kept"]
KINDS: tuple[Kind, ...] = ("full", "masked", "kept")
FULL = "full"
# separators of a list written as one string: "sam+clip" (keys, model args), "sam,clip" (options); ";", "|" and
# spaces where a shell or lmms-eval's own comma splitting gets in the way
_SEPARATORS = re.compile(r"[+;|,\s]+")
ErrorType = type[EncslimError]


def split_names(value: object) -> tuple[str, ...]:
    """Slot names from any list spelling, in the given order, without checking them.

    Args:
        value: ``None``/``False``/``""`` (no slot), one string (``"sam"``, ``"sam+clip"``,
            ``"sam,clip"``; ``;``, ``|`` and spaces separate too; surrounding quotes are dropped), or
            an iterable of such strings (a list, a set, another :class:`SlotSet`'s ``masked``).

    Returns:
        the names as strings; duplicates kept (callers that refuse them check).
    """
    if value is None or value is False:
        return ()
    if isinstance(value, str):
        return tuple(s for s in _SEPARATORS.split(value.strip().strip("\"'")) if s)
    if isinstance(value, Iterable):  # each item may itself be a list spelling (a repeated "--mask a+b")
        return tuple(name for item in value for name in split_names(str(item)))
    return (str(value),)


def parse_key(key: object, what: str = "--predictions key") -> tuple[Kind, tuple[str, ...]]:
    """The kind and slot names of a mask-set key: ``full``, ``masked:A[+B...]`` or ``kept:A[+B...]``.

    Args:
        key: the key as the user typed it.
        what: names the key in the error (``--predictions key``).

    Returns:
        ``("full", ())``, ``("masked", names)`` or ``("kept", names)``.

    Raises:
        ConfigError: another form, no slot after the colon, or a slot named twice.
    """
    text = str(key).strip()
    if text == FULL:
        return "full", ()
    kind, _, names = text.partition(":")
    slots = tuple(s.strip() for s in names.split("+") if s.strip())
    if kind not in ("masked", "kept") or not slots or len(set(slots)) != len(slots):
        raise ConfigError(f"{what} '{key}' not understood; use full, masked:SLOT[+SLOT...] or kept:SLOT[+SLOT...]")
    return ("masked" if kind == "masked" else "kept"), slots


def slots_of_keys(keys: Iterable[object]) -> list[str]:
    """The slot names that mask-set keys use, in order of first appearance (no model to ask)."""
    slots: list[str] = []
    for key in keys:
        slots.extend(s for s in parse_key(key)[1] if s not in slots)
    return slots


class SlotSet:
    """An immutable set of masked slots of a model, bound to the model's ordered slot names.

    Build it with :meth:`from_masked`, :meth:`from_kept`, :meth:`from_drop` or :meth:`parse`;
    each checks the names against ``slots`` once. Two slot sets are equal when they mask the same
    slots of the same slots.

    Attributes:
        slots: the model's slot names, in the model's order.
        masked: the masked (dropped) slots, a frozenset (what the adapters take).
    """

    __slots__ = ("slots", "masked")
    slots: tuple[str, ...]
    masked: frozenset[str]

    def __init__(self, slots: Sequence[str], masked: Iterable[str] = (), *, error: ErrorType = ConfigError,
                 what: str = "") -> None:
        """Check ``masked`` against ``slots`` (see :meth:`from_masked`, the documented entry point)."""
        ordered = tuple(str(s) for s in slots)
        names = split_names(masked)
        check_slot_names(ordered, names, error, what)
        object.__setattr__(self, "slots", ordered)
        object.__setattr__(self, "masked", frozenset(names))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SlotSet is immutable; build a new one instead of setting {name}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_masked(cls, slots: Sequence[str], masked: object = (), *, error: ErrorType = ConfigError,
                    what: str = "") -> SlotSet:
        """The set that masks ``masked`` (any spelling of :func:`split_names`; empty: the full model).

        Args:
            slots: the model's slot names, in order.
            masked: the slots to mask.
            error: the error class of an unknown slot (``ConfigError``; ``PlanError`` for prune).
            what: prefixes the error message (e.g. ``"--predictions masked:x: "``).

        Raises:
            error: a name that is not one of ``slots`` (the message lists the valid slots).
        """
        return cls(slots, split_names(masked), error=error, what=what)

    @classmethod
    def from_kept(cls, slots: Sequence[str], kept: object, *, error: ErrorType = ConfigError,
                  what: str = "") -> SlotSet:
        """The set that keeps exactly ``kept`` and masks every other slot (same arguments as :meth:`from_masked`)."""
        names = split_names(kept)
        check_slot_names(tuple(slots), names, error, what)
        return cls(slots, [s for s in slots if s not in set(names)], error=error, what=what)

    @classmethod
    def from_drop(cls, slots: Sequence[str], drop: object, *, error: ErrorType = ConfigError,
                  what: str = "") -> SlotSet:
        """The set that drops (masks) ``drop``: ``prune --drop``'s spelling of :meth:`from_masked`."""
        return cls.from_masked(slots, drop, error=error, what=what)

    @classmethod
    def parse(cls, slots: Sequence[str], key: object, *, what: str = "--predictions key") -> SlotSet:
        """The set a key names: ``full``, ``masked:A+B`` or ``kept:A`` (see :func:`parse_key`).

        Raises:
            ConfigError: a malformed key, or one naming a slot the model lacks (the message names the
                key and the valid slots).
        """
        kind, names = parse_key(key, what)
        prefix = f"{what.split(' ')[0]} {key}: "
        if kind == "kept":
            return cls.from_kept(slots, names, what=prefix)
        return cls.from_masked(slots, names, what=prefix)

    # ------------------------------------------------------------------ views
    @property
    def kept(self) -> tuple[str, ...]:
        """The kept slots, in the model's order."""
        return tuple(s for s in self.slots if s not in self.masked)

    @property
    def masked_ordered(self) -> tuple[str, ...]:
        """The masked slots, in the model's order."""
        return tuple(s for s in self.slots if s in self.masked)

    @property
    def is_full(self) -> bool:
        """Whether nothing is masked (the full model)."""
        return not self.masked

    @property
    def key(self) -> str:
        """The canonical key: ``full`` or ``masked:A+B`` (slots in the model's order)."""
        return FULL if self.is_full else "masked:" + "+".join(self.masked_ordered)

    def require_kept(self, error: ErrorType = ConfigError) -> SlotSet:
        """This set, unless it masks every slot.

        Raises:
            error: every slot is masked (at least one encoder must stay).
        """
        if self.slots and not self.kept:
            raise error("cannot remove every encoder; keep at least one slot")
        return self

    # ------------------------------------------------------------------ value semantics
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotSet):
            return NotImplemented
        return self.slots == other.slots and self.masked == other.masked

    def __hash__(self) -> int:
        return hash((self.slots, self.masked))

    def __iter__(self) -> Iterator[str]:
        """The masked slots, in the model's order."""
        return iter(self.masked_ordered)

    def __len__(self) -> int:
        return len(self.masked)

    def __contains__(self, slot: object) -> bool:
        return slot in self.masked

    def __repr__(self) -> str:
        return f"SlotSet({self.key!r}, slots={list(self.slots)!r})"


def mask_sets(slots: Sequence[str], values: Iterable[object], *, what: str = "--mask",
              error: ErrorType = ConfigError) -> list[SlotSet]:
    """The full model, then the set each of ``values`` masks: ``--mask``'s repeated option, read once.

    Args:
        slots: the model's slot names, in order.
        values: one spelling per mask set (``"sam,clip"``, ``"sam+clip"``, ``["sam", "clip"]``); an empty
            one stands for the full model.
        what: names the option in the error (``--mask``).
        error: the error class of an unknown slot.

    Returns:
        ``[full, ...]`` without repeats, in the order given.

    Raises:
        error: a name that is not one of ``slots`` (``--mask sam: unknown slot(s) sam; this model's
            slots are clip, siglip``).
    """
    sets = [SlotSet(slots)]
    for value in values:
        names = split_names(value)
        one = SlotSet.from_masked(slots, names, error=error, what=f"{what} {','.join(names)}: ")
        if one not in sets:
            sets.append(one)
    return sets


__all__ = ["FULL", "KINDS", "Kind", "SlotSet", "mask_sets", "parse_key", "slots_of_keys", "split_names"]
