"""Getting answers out of the model: greedy generation, or an MCQ choice by first-token logits.

Both take the model inputs of one padded batch (``input_ids``, ``attention_mask``, LEFT padded)
plus the model keyword arguments that carry the image: ``image_features`` (the feature cache)
or ``pixel_values_<slot>`` (no cache), ``masked_slots``, ``mask_mode`` and ``mask_values``.
"""

import torch

from ..errors import ConfigError


def position_ids_from_mask(attention_mask):
    """Positions counting only real tokens (0 at each row's first token), as ``generate`` uses.

    With left padding, ``arange`` positions would shift every padded row; counting from the
    first real token gives each row the positions it would have on its own.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def generate_texts(model, processor, inputs, max_new_tokens, **model_kwargs):
    """Greedy-decode up to ``max_new_tokens`` tokens per row.

    Args:
        model: a generation-capable model.
        processor: its processor (for ``batch_decode`` and the pad token).
        inputs: ``{"input_ids", "attention_mask"}`` (plus pixel values, if any).
        max_new_tokens: generation budget.
        **model_kwargs: image and mask arguments passed to the model's forward.

    Returns:
        list[str], one stripped answer per row (special tokens removed).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    config = getattr(model, "generation_config", None)
    special = {}  # the model's own generation config wins (chat models stop on several ids)
    if getattr(config, "pad_token_id", None) is None:
        special["pad_token_id"] = tokenizer.pad_token_id
    if getattr(config, "eos_token_id", None) is None:
        special["eos_token_id"] = tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, **model_kwargs, **special, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
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


def choose_options(model, processor, inputs, options_per_row, **model_kwargs):
    """Pick each row's option by the logits of the options' first tokens at the answer position.

    One forward pass per batch: the last position's logits (left padding puts every row's last
    real token there) are compared over the row's option tokens only, so the choice is always
    a valid letter.

    Args:
        model: the model (its forward accepts the image and mask keyword arguments).
        processor: its processor (for the tokenizer).
        inputs: ``{"input_ids", "attention_mask"}`` (plus pixel values, if any).
        options_per_row: one ``{"A": text, ...}`` per row.
        **model_kwargs: image and mask arguments passed to the model's forward.

    Returns:
        list[str], the chosen letter per row.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    letters = sorted({k for options in options_per_row for k in options})
    token_ids = option_token_ids(tokenizer, letters)
    positions = position_ids_from_mask(inputs["attention_mask"])
    with torch.inference_mode():
        out = model(**inputs, **model_kwargs, position_ids=positions, logits_to_keep=1, use_cache=False)
    logits = out.logits[:, -1].float()
    chosen = []
    for row, options in enumerate(options_per_row):
        row_letters = list(options)
        values = logits[row, [token_ids[k] for k in row_letters]]
        chosen.append(row_letters[int(values.argmax())])
    return chosen
