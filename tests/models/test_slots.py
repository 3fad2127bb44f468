"""SlotSet: every spelling of a slot set read once, checked once against the model's ordered slots."""

import re

import pytest

from encslim.errors import ConfigError, PlanError
from encslim.models.slots import SlotSet, parse_key, slots_of_keys, split_names

SLOTS = ["clip", "siglip", "sam"]


def test_every_spelling_gives_the_same_set():
    expected = SlotSet.from_masked(SLOTS, frozenset({"sam", "clip"}))
    assert expected.masked == frozenset({"clip", "sam"})
    assert expected.kept == ("siglip",) and expected.masked_ordered == ("clip", "sam")
    spellings = [
        SlotSet.from_masked(SLOTS, ["sam", "clip"]),          # the masked_slots batch key (a list)
        SlotSet.from_masked(SLOTS, "sam+clip"),               # lmms-eval masked=sam+clip
        SlotSet.from_masked(SLOTS, '"sam,clip"'),             # quoted, comma separated
        SlotSet.from_kept(SLOTS, ["siglip"]),                 # a kept list
        SlotSet.from_drop(SLOTS, ("clip", "sam")),            # prune --drop
        SlotSet.parse(SLOTS, "masked:sam+clip"),              # rank --predictions keys
        SlotSet.parse(SLOTS, "kept:siglip"),
    ]
    assert all(s == expected for s in spellings)
    assert len({*spellings, expected}) == 1  # hashable, equal sets hash equal
    assert expected.key == "masked:clip+sam" and list(expected) == ["clip", "sam"]
    assert "sam" in expected and "siglip" not in expected and len(expected) == 2


def test_full_and_empty_spellings():
    for value in (None, False, "", (), frozenset()):
        full = SlotSet.from_masked(SLOTS, value)
        assert full.is_full and full.kept == tuple(SLOTS) and full.key == "full"
    assert SlotSet.parse(SLOTS, "full") == SlotSet.from_masked(SLOTS)
    assert SlotSet.from_masked(SLOTS) != SlotSet.from_masked(["clip", "siglip"])  # bound to its model's slots


def test_unknown_slot_is_one_line_naming_the_valid_slots():
    with pytest.raises(ConfigError) as err:
        SlotSet.from_masked(SLOTS, "sam+dino")
    assert str(err.value) == "unknown slot(s) dino; this model's slots are clip, siglip, sam"
    with pytest.raises(PlanError, match="^unknown slot\\(s\\) x, y; this model's slots are clip, siglip, sam$"):
        SlotSet.from_drop(SLOTS, ["y", "x"], error=PlanError)
    with pytest.raises(ConfigError) as err:
        SlotSet.parse(SLOTS, "kept:dino")
    assert str(err.value) == "--predictions kept:dino: unknown slot(s) dino; this model's slots are clip, siglip, sam"


@pytest.mark.parametrize("key", ["masked", "masked:", "kept:a+a", "drop:a", "Full", "masked:+"])
def test_malformed_keys(key):
    with pytest.raises(ConfigError, match=re.escape(f"--predictions key '{key}' not understood; use full, masked:SLOT")):
        parse_key(key)


def test_key_syntax_without_a_model():
    assert parse_key(" masked:sam + clip ") == ("masked", ("sam", "clip"))
    assert parse_key("kept:a") == ("kept", ("a",)) and parse_key("full") == ("full", ())
    assert slots_of_keys(["full", "masked:b", "kept:a+b", "masked:c"]) == ["b", "a", "c"]
    assert split_names("a | b;c d") == ("a", "b", "c", "d") and split_names(["a", " b "]) == ("a", "b")


def test_immutable_and_every_slot_check():
    every = SlotSet.from_masked(SLOTS, SLOTS)
    assert every.kept == ()
    with pytest.raises(AttributeError, match="immutable"):
        every.masked = frozenset()
    with pytest.raises(PlanError, match="^cannot remove every encoder; keep at least one slot$"):
        every.require_kept(PlanError)
    one = SlotSet.from_kept(SLOTS, "sam")
    assert one.require_kept() is one and one.masked_ordered == ("clip", "siglip")
