"""Processor of the native encslim model: per-slot image processing plus the tokenizer.

Self-contained (torch, numpy, PIL, transformers) so that remote-code export can ship it.
Each slot resizes the image to its own square input size and normalises it with its own
mean/std; the ``<image>`` placeholder in the text is expanded to the number of image tokens
the fusion produces for the slots that are present (fewer when a class-B slot is masked), and
fewer again under a visual-token budget (``token_budget``: each token grid keeps
``budget.tokens_out(grid)`` tokens, as the model's reducer leaves them; ``tokens.py``).
"""

import json
import os

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from .configuration import square_grid
from ...tokens import CONFIG_KEY, parse_budget

PROCESSOR_CONFIG = "processor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
IMAGE_TOKEN = "<image>"
DEFAULT_TEMPLATE = "USER: {prompt}\nASSISTANT:"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json", "chat_template.json")
RESAVE = "re-save the model with its processor (EncslimProcessor.save_pretrained) or copy the file from the original model"


class EncslimProcessor:
    """Turn images and text into model inputs.

    Args:
        tokenizer: a transformers tokenizer holding the ``<image>`` token.
        encoders: per slot ``{"name", "image_size", "image_mean", "image_std"}``, in fusion order.
        image_tokens: per slot, the tokens it contributes (``sequence_concat``), or ``None``.
        total_image_tokens: the fixed image token count (``channel_concat``, ``cross_attention``).
        prompt_template: chat template with a ``{prompt}`` field; the answer follows it.
        token_budget: the visual-token budget (a ``TokenBudget``, its dict, or ``None``: every token). The
            attribute ``token_budget`` may be set later (the adapter does so for one evaluation); it is not
            saved in ``processor_config.json`` (the model's ``config.json`` carries it), so ``to_dict`` and
            the features it decides stay budget-free.
    """

    def __init__(self, tokenizer, encoders, image_tokens=None, total_image_tokens=None,
                 prompt_template=DEFAULT_TEMPLATE, image_token=IMAGE_TOKEN, token_budget=None):
        self.tokenizer = tokenizer
        self.encoders = [dict(e) for e in encoders]
        self.image_tokens = dict(image_tokens) if image_tokens else None
        self.total_image_tokens = total_image_tokens
        self.prompt_template = prompt_template
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.token_budget = parse_budget(token_budget)

    @classmethod
    def from_config(cls, tokenizer, config, **kwargs):
        """Build the processor that matches an ``EncslimConfig``."""
        encoders = [
            {k: e[k] for k in ("name", "image_size", "image_mean", "image_std")} for e in config.encoders
        ]
        kwargs.setdefault("token_budget", getattr(config, CONFIG_KEY, None))
        if config.fusion["type"] == "sequence_concat":
            return cls(tokenizer, encoders, image_tokens={s: config.slot_num_tokens(s) for s in config.slot_names},
                       **kwargs)
        return cls(tokenizer, encoders, total_image_tokens=config.num_image_tokens(), **kwargs)

    @property
    def slot_names(self):
        return [e["name"] for e in self.encoders]

    # ------------------------------------------------------------------ text
    def num_image_tokens(self, masked_slots=()):
        """Image tokens in the prompt when ``masked_slots`` are removed (class B drops theirs), after the
        token budget ``self.token_budget`` (each grid of :meth:`token_grids` keeps ``tokens_out(grid)``)."""
        budget = parse_budget(getattr(self, "token_budget", None))
        grids = self.token_grids(masked_slots) if budget is not None else None
        if grids is not None:
            return sum(budget.tokens_out(grid) for grid in grids)
        if self.image_tokens is None:
            return self.total_image_tokens
        return sum(n for s, n in self.image_tokens.items() if s not in set(masked_slots))

    def token_grids(self, masked_slots=()):
        """The token grids of one image, as ``EncslimConfig.token_grids`` gives them, read off the token counts:
        a square count is a square grid; a slot with a non-square count keeps its CLS token (no grid: ``None``);
        a non-square total (cross-attention queries) is one row."""
        if self.image_tokens is None:
            return [square_grid(self.total_image_tokens)]
        grids = {s: square_grid(self.image_tokens[s]) for s in self.slot_names if s in self.image_tokens}
        if any(h == 1 and w > 1 for h, w in grids.values()):
            return None
        return [g for s, g in grids.items() if s not in set(masked_slots)]

    def build_prompt(self, question, with_image=True):
        """Wrap a question in the chat template, with the image placeholder first."""
        prompt = f"{self.image_token}\n{question}" if with_image else question
        return self.prompt_template.format(prompt=prompt)

    def expand_image_tokens(self, text, masked_slots=()):
        return text.replace(self.image_token, self.image_token * self.num_image_tokens(masked_slots))

    # ------------------------------------------------------------------ images
    def preprocess_images(self, images, slots=None):
        """``{slot: (B, 3, S, S) float tensor}`` for a list of PIL images."""
        wanted = self.slot_names if slots is None else [s for s in self.slot_names if s in set(slots)]
        images = [_to_rgb(img) for img in images]
        out = {}
        for enc in self.encoders:
            if enc["name"] not in wanted:
                continue
            size = enc["image_size"]
            mean = np.asarray(enc["image_mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(enc["image_std"], dtype=np.float32)[:, None, None]
            arrays = []
            for img in images:
                resized = img.resize((size, size), Image.BICUBIC) if img.size != (size, size) else img
                array = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
                arrays.append((array - mean) / std)
            out[enc["name"]] = torch.from_numpy(np.stack(arrays))
        return out

    def __call__(self, text=None, images=None, masked_slots=(), padding=True, return_tensors="pt", **kwargs):
        """Tokenize ``text`` (``<image>`` expanded) and process ``images``.

        Returns a ``BatchFeature`` with ``input_ids``, ``attention_mask`` and one
        ``pixel_values_<slot>`` per slot that is present. Slots in ``masked_slots`` get no pixels.
        """
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            texts = [self.expand_image_tokens(t, masked_slots) for t in texts]
            data.update(self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **kwargs))
        if images is not None:
            images = [images] if isinstance(images, Image.Image) else list(images)
            kept = [s for s in self.slot_names if s not in set(masked_slots)]
            for slot, pixels in self.preprocess_images(images, kept).items():
                data[f"pixel_values_{slot}"] = pixels
        return BatchFeature(data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    # ------------------------------------------------------------------ persistence
    def to_dict(self):
        return {
            "processor_class": type(self).__name__,
            "encoders": self.encoders,
            "image_tokens": self.image_tokens,
            "total_image_tokens": self.total_image_tokens,
            "prompt_template": self.prompt_template,
            "image_token": self.image_token,
        }

    def chat_template(self):
        """The Jinja chat template of this processor's prompt format (see :func:`chat_template`)."""
        return chat_template(self.prompt_template, self.image_token)

    def save_pretrained(self, save_directory, **kwargs):
        """Write the tokenizer, ``processor_config.json`` and, when the tokenizer has no chat template of its
        own, ``chat_template.jinja`` (this processor's prompt format: chat servers such as vLLM's need one)."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        if getattr(self.tokenizer, "chat_template", None) is None:
            with open(os.path.join(save_directory, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
                f.write(self.chat_template())
        data = self.to_dict()
        auto_map = getattr(self, "auto_map", None)
        if auto_map:
            data["auto_map"] = auto_map
        with open(os.path.join(save_directory, PROCESSOR_CONFIG), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        return [os.path.join(save_directory, PROCESSOR_CONFIG)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Read ``processor_config.json`` and the tokenizer of a model folder.

        Raises:
            ProcessorFileError: (a ``ValueError``) naming the processor or tokenizer file that is
                missing, not JSON, or lacks the ``encoders`` list.
        """
        path = str(pretrained_model_name_or_path)
        config_file = os.path.join(path, PROCESSOR_CONFIG)
        if not os.path.isfile(config_file):
            raise ProcessorFileError(f"{config_file} not found; {RESAVE}")
        data = _read_json_file(config_file)
        if not isinstance(data, dict) or not isinstance(data.get("encoders"), list):
            raise ProcessorFileError(f"{config_file} holds no 'encoders' list, so it is not an encslim processor "
                                     f"config; {RESAVE}")
        # a remote-code folder (auto_map in config.json) needs the caller's trust_remote_code here too
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
        except Exception as err:
            _check_tokenizer_files(path, err)  # names the unreadable file, if one is
            raise
        return cls(
            tokenizer,
            data["encoders"],
            image_tokens=data.get("image_tokens"),
            total_image_tokens=data.get("total_image_tokens"),
            prompt_template=data.get("prompt_template", DEFAULT_TEMPLATE),
            image_token=data.get("image_token", IMAGE_TOKEN),
            token_budget=_folder_budget(path),
        )

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        cls._auto_class = auto_class


def chat_template(prompt_template=DEFAULT_TEMPLATE, image_token=IMAGE_TOKEN):
    """A Jinja chat template that renders one user turn (an image, then the text) and the generation prompt
    exactly as :meth:`EncslimProcessor.build_prompt` builds the prompt.

    ``prompt_template`` is split at ``{prompt}``: the part before opens a user turn, the part after is the
    generation prompt (and opens an assistant turn, whose text follows after a space and ends with the EOS
    token). Images come first, each its placeholder and a newline. The format has no system turn: one is refused.
    """
    marker = "\x00"
    head, tail = (json.dumps(part) for part in prompt_template.format(prompt=marker).split(marker))
    image = json.dumps(image_token + "\n")
    # text goes through {{ }} expressions only: chat renderers (trim_blocks) drop a newline after a tag
    parts = ("{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ " + image + " }}{% endif %}{% endfor %}"
             "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}")
    text = "{% if message['content'] is string %}{{ message['content'] }}{% else %}" + parts + "{% endif %}"
    return ("{% for message in messages %}{% if message['role'] == 'user' %}{{ " + head + " }}" + text +
            "{% elif message['role'] == 'assistant' %}{{ " + tail + " }}{{ ' ' }}" + text + "{{ eos_token }}"
            "{% else %}{{ raise_exception('this prompt format has user and assistant turns only, not ' + "
            "message['role']) }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt and messages[-1]['role'] == 'user' %}{{ " + tail + " }}{% endif %}")


class ProcessorFileError(ValueError):
    """A processor or tokenizer file of a model folder is missing or unreadable; the message names it."""


def _read_json_file(path, fix=RESAVE):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProcessorFileError(f"{path} is not valid JSON ({err}); {fix}") from err


def _folder_budget(path):
    """The ``token_budget`` of the model's ``config.json`` beside the processor files (``None``: absent)."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    data = _read_json_file(file, fix="re-save the model (save_pretrained)")
    return data.get(CONFIG_KEY) if isinstance(data, dict) else None


def _check_tokenizer_files(path, cause):
    """Raise ``ProcessorFileError`` (from ``cause``) naming the first tokenizer JSON file in ``path``
    that does not parse; return if they all do (the tokenizer failed for another reason)."""
    for name in TOKENIZER_JSON_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                _read_json_file(file, fix="re-save the tokenizer (tokenizer.save_pretrained) or copy the file "
                                          "from the original model")
            except ProcessorFileError as err:
                raise err from cause


def _to_rgb(image):
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return img.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


__all__ = ["EncslimProcessor", "ProcessorFileError"]
