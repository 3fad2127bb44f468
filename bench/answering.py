"""Getting answers out of the model: greedy generation, or an MCQ choice by first-token logits.

Both go through the family's adapter with one LEFT-padded batch (``input_ids``,
``attention_mask``) and either cached encoder features or the batch's pixel inputs.
"""

from typing import Any, NamedTuple

import torch

from ..errors import ConfigError


class Loaded(NamedTuple):
    """A model as :func:`encslim.models.loading.load_model` returns it: ``(model, processor, adapter)``.

    Any such triple works where a ``Loaded`` is asked for (``load_model``'s tuple as it is).
    """

    model: Any
    processor: Any
    adapter: Any


def generate_texts(loaded, features, batch, max_new_tokens, masked=frozenset(), mask_mode="removal", mask_values=None):
    """Greedy-decode up to ``max_new_tokens`` tokens per row, through the family's adapter.

    Args:
        loaded: ``(model, processor, adapter)`` (:class:`Loaded`), as :func:`~encslim.models.loading.load_model`
            returns them.
        features: cached ``{slot: features}``, or None to encode the batch's pixels.
        batch: ``{"input_ids", "attention_mask"}`` (LEFT padded; plus pixel inputs without features).
        max_new_tokens: generation budget.
        masked, mask_mode, mask_values: the mask set.

    Returns:
        list[str], one stripped answer per row (special tokens removed).
    """
    model, processor, adapter = loaded
    tokenizer = adapter.tokenizer(processor)
    config = getattr(model, "generation_config", None)
    special = {}  # the model's own generation config wins (chat models stop on several ids)
    if getattr(config, "pad_token_id", None) is None:
        special["pad_token_id"] = tokenizer.pad_token_id
    if getattr(config, "eos_token_id", None) is None:
        special["eos_token_id"] = tokenizer.eos_token_id
    with torch.inference_mode():
        new_tokens = adapter.generate(model, features, batch, masked, mask_mode, mask_values,
                                      max_new_tokens=max_new_tokens, **special)
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def option_token_ids(tokenizer, letters):
    """The token that starts each option letter when the model answers it (``" A"`` after the prompt).

    The answer follows the prompt after a space, so ``" A"`` is tokenised; its first token that
    carries the letter is the one the model must emit first. A tokenizer that splits off the space
    would otherwise give every option the same first token.

    Args:
        tokenizer: the model's tokenizer.
        letters: option letters, e.g. ``["A", "B", "C"]``.

    Returns:
        dict letter -> token id.

    Raises:
        ConfigError: two letters share their first token (the logits cannot tell them apart).
    """
    ids = {}
    for letter in letters:
        pieces = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
        chosen = next((t for t in pieces if letter in tokenizer.decode([t])), pieces[0])
        ids[letter] = chosen
    if len(set(ids.values())) != len(ids):
        raise ConfigError(
            "the tokenizer gives several option letters the same first token; use mcq mode 'generate'"
        )
    return ids


def choose_options(loaded, features, batch, options_per_row, masked=frozenset(), mask_mode="removal",
                   mask_values=None):
    """Pick each row's option by the logits of the options' first tokens at the answer position.

    One forward pass per batch (:meth:`Adapter.next_token_logits`: left padding puts every row's
    last real token last), compared over the row's option tokens only, so the choice is always a
    valid letter.

    Args:
        loaded: ``(model, processor, adapter)`` (:class:`Loaded`).
        features: cached ``{slot: features}``, or None to encode the batch's pixels.
        batch: ``{"input_ids", "attention_mask"}`` (plus pixel inputs without features).
        options_per_row: one ``{"A": text, ...}`` per row.
        masked, mask_mode, mask_values: the mask set.

    Returns:
        list[str], the chosen letter per row.
    """
    model, processor, adapter = loaded
    tokenizer = adapter.tokenizer(processor)
    letters = sorted({k for options in options_per_row for k in options})
    token_ids = option_token_ids(tokenizer, letters)
    with torch.inference_mode():
        if features is None:
            run = [s for s in adapter.slot_names(model.config) if not (mask_mode == "removal" and s in set(masked))]
            features = adapter.encode(model, batch, run)
        logits = adapter.next_token_logits(model, features, batch, masked, mask_mode, mask_values).float()
    chosen = []
    for row, options in enumerate(options_per_row):
        row_letters = list(options)
        values = logits[row, [token_ids[k] for k in row_letters]]
        chosen.append(row_letters[int(values.argmax())])
    return chosen
