"""An lmms-eval model that runs any encslim-supported family with encoders masked.

With ``pip install 'encslim[lmms]'`` the entry point (``lmms_eval.models`` group, see setup.cfg)
registers it as ``encslim``::

    lmms-eval eval --model encslim --model_args pretrained=PATH,masked=sam --tasks mme
    python -m lmms_eval --model encslim --model_args pretrained=PATH,masked=sam+clip,mask_mode=zero ...

``model_args`` (lmms-eval parses ``key=value`` pairs split on commas, so several slots are
joined with ``+``, ``;`` or ``|``): ``pretrained`` (a local model folder, loaded with
:func:`encslim.models.loading.load_model`: every family, strict loading), ``masked`` (slots to
mask; empty: the full model), ``mask_mode`` (``removal`` or ``zero``; ``mean`` needs per-slot
mean features this model cannot compute), ``device``, ``dtype``, ``batch_size`` and
``max_new_tokens`` (the budget when a task's ``generation_kwargs`` set none).

Decoding is always greedy, as ``encslim eval`` decodes: ``temperature``, ``do_sample``,
``top_p``, ``num_beams``... in a task's ``generation_kwargs`` are ignored (logged once).
``until`` cuts each answer at its first stop string. One image per document (the first of
``doc_to_visual``'s list; videos are refused); prompts are the family's chat prompt around the
task's context, so a context already holding ``<image>`` is not given a second placeholder.
Only ``generate_until`` is supported: ``loglikelihood`` and ``generate_until_multi_round``
raise ``NotImplementedError``.

The base class is lmms-eval's ``lmms_eval.api.model.lmms`` when lmms-eval imports; otherwise
:class:`_LmmsStandIn`, a local copy of its interface (the same constructor state, ``rank``,
``world_size``, ``task_dict``, ``create_from_arg_string``, the three abstract request methods),
so this module and its tests work without lmms-eval installed.
"""

import abc
import logging
import os
import re

from ..errors import ConfigError, DataError
from ..models.loading import load_model
from ..models.masking import MASK_MODES
from ..models.slots import SlotSet, split_names
from .answering import generate_texts

logger = logging.getLogger(__name__)

MODEL_ID = "encslim"
CLASS_PATH = "encslim.bench.lmms_model.EncslimLmms"
DEFAULT_MAX_NEW_TOKENS = 32
# generation_kwargs that would change greedy decoding; ignored (logged once per model)
SAMPLING_KWARGS = ("temperature", "do_sample", "top_p", "top_k", "num_beams", "typical_p", "repetition_penalty",
                   "length_penalty", "num_return_sequences")
# keys lmms-eval passes besides model_args (create_from_arg_string's additional_config)
_IGNORED_INIT_KWARGS = ("max_batch_size",)

def _parse_arg(value):
    """One ``model_args`` value as lmms-eval 0.7.3 converts it (``utils.handle_arg_string``)."""
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    if value.isnumeric():
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


class _LmmsStandIn(abc.ABC):
    """The interface of ``lmms_eval.api.model.lmms`` (0.7.3), for when lmms-eval is not installed."""

    is_simple = True

    def __init__(self):
        self._rank = 0
        self._world_size = 1
        self.cache_hook = _CacheHook()
        self.task_dict = {}

    @abc.abstractmethod
    def loglikelihood(self, requests):
        """``[(logprob, is_greedy)]`` per request (args: context, continuation, ...)."""

    @abc.abstractmethod
    def generate_until(self, requests):
        """One generated string per request (args: context, gen_kwargs, doc_to_visual, doc_id, task, split)."""

    @abc.abstractmethod
    def generate_until_multi_round(self, requests):
        """Multi-round generation."""

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """``cls(**key=value pairs of arg_string, **non-None additional_config)``, as lmms-eval builds models
        (a plain comma split: lmms-eval also keeps commas inside quotes and braces)."""
        args = {}
        for part in arg_string.strip().split(",") if arg_string.strip() else []:
            key, value = part.split("=", 1)
            args[key] = _parse_arg(value)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def set_cache_hook(self, cache_hook):
        self.cache_hook = cache_hook


class _CacheHook:
    def add_partial(self, attr, req, res):
        pass


try:
    from lmms_eval.api.model import lmms as _Base

    HAVE_LMMS_EVAL = True
except ImportError:  # lmms-eval not installed: the local stand-in
    _Base = _LmmsStandIn
    HAVE_LMMS_EVAL = False


def parse_masked(masked):
    """``masked`` from ``model_args`` as a list of slot names: ``"sam"``, ``"sam+clip"`` (or ``;``, ``|``,
    ``,`` when quoted), a list, or empty for the full model (:func:`encslim.models.slots.split_names`)."""
    return list(split_names(masked))


def _batch_size(value):
    if isinstance(value, str) and value.startswith("auto"):
        logger.warning("batch_size=%s: automatic batch sizes are not supported; using 1", value)
        return 1
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a whole number, got {value!r}") from None
    if size < 1 or size != float(value):
        raise ConfigError(f"batch_size must be a whole number of at least 1, got {value!r}")
    return size


def _positive_int(name, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1 or number != float(value):
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    return number


def _device(device):
    """``cuda`` under a multi-process launcher means this process's GPU (``LOCAL_RANK``)."""
    device = str(device or "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def cut_at_stops(text, until):
    """``text`` up to the first occurrence of any stop string in ``until`` (empty strings ignored)."""
    cut = len(text)
    for stop in until:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def _stops(gen_kwargs):
    until = gen_kwargs.get("until", [])
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        return list(until)
    raise ConfigError(f"gen_kwargs['until'] must be a string or a list of strings, got {type(until).__name__}")


class EncslimLmms(_Base):
    """lmms-eval model: an encslim model folder, evaluated with ``masked`` encoder slots masked.

    Args:
        pretrained: a local model folder of any encslim-supported family.
        masked: slots to mask (see :func:`parse_masked`); empty for the full model.
        mask_mode: ``removal`` (equals physical removal) or ``zero``.
        device, dtype: as for :func:`encslim.models.loading.load_model`.
        batch_size: requests per generation batch.
        max_new_tokens: generation budget when a request's ``gen_kwargs`` has no ``max_new_tokens``.
        **kwargs: ``max_batch_size`` (passed by lmms-eval) is ignored; anything else is a ConfigError.

    Raises:
        ConfigError: an unknown slot (naming the valid ones), mode or argument; ``mean`` mode with a mask.
        ModelLoadError: the folder does not load (see ``load_model``).
    """

    is_simple = True

    def __init__(self, pretrained, masked="", mask_mode="removal", device="cpu", dtype="float32", batch_size=1,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(_IGNORED_INIT_KWARGS))
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(unknown)} for the encslim lmms-eval model; known: "
                              "pretrained, masked, mask_mode, device, dtype, batch_size, max_new_tokens")
        if mask_mode not in MASK_MODES:
            raise ConfigError(f"mask mode '{mask_mode}' unknown; use one of {', '.join(MASK_MODES)}")
        self.batch_size_per_gpu = _batch_size(batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.pretrained = str(pretrained)
        self.mask_mode = mask_mode
        self._device_name = _device(device)
        self._model, self.processor, self.adapter = load_model(self.pretrained, device=self._device_name,
                                                               dtype=str(dtype))
        config = self._model.config
        slot_set = SlotSet.from_masked(self.adapter.slot_names(config), masked, what="masked: ")
        if slot_set.masked and mask_mode == "mean":
            raise ConfigError("mask_mode=mean needs per-slot mean features, which the lmms-eval model cannot "
                              "compute; use removal or zero (or encslim eval --mask-mode mean)")
        self.masked = self.adapter.check_mask(config, slot_set.masked, mask_mode)
        self._warned = set()
        logger.info("encslim lmms-eval model: %s (%s), masked: %s (%s); greedy decoding", self.pretrained,
                    self.adapter.model_type, ", ".join(sorted(self.masked)) or "none", mask_mode)

    # ------------------------------------------------------------------ properties lmms-eval reads
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.adapter.tokenizer(self.processor)

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._model.device

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, requests):
        raise NotImplementedError("the encslim lmms-eval model only generates (generate_until tasks); "
                                  "loglikelihood tasks are not supported: use encslim eval --mcq logits for MCQ")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the encslim lmms-eval model does not support multi-round generation "
                                  "(generate_until_multi_round); only generate_until tasks")

    def generate_until(self, requests):
        """Greedy answers, one per request, in request order.

        Each request's ``args`` is ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``;
        the document is ``self.task_dict[task][split][doc_id]``.
        """
        prepared = [self._prepare(i, req.args) for i, req in enumerate(requests)]
        groups = {}
        for item in prepared:  # homogeneous batches: with or without an image, one token budget
            groups.setdefault((item["image"] is not None, item["max_new_tokens"]), []).append(item)
        results = [None] * len(prepared)
        for (with_image, budget), items in groups.items():
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                for item, text in zip(batch, self._generate(batch, with_image, budget)):
                    answer = cut_at_stops(text, item["until"]).strip()
                    results[item["index"]] = answer
                    self.cache_hook.add_partial("generate_until", (item["context"], item["gen_kwargs"]), answer)
        return results

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key, message, *args):
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _prepare(self, index, args):
        if len(args) != 6:
            raise ConfigError(f"a generate_until request has args (context, gen_kwargs, doc_to_visual, doc_id, "
                              f"task, split); got {len(args)} values")
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        gen_kwargs = dict(gen_kwargs or {})  # tasks share one dict between requests: never modify it
        ignored = sorted(k for k in gen_kwargs if k in SAMPLING_KWARGS)
        if ignored:
            self._warn_once("sampling", "encslim lmms-eval model: greedy decoding forced; ignoring gen_kwargs %s",
                            ", ".join(ignored))
        budget = _positive_int("max_new_tokens", gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        doc = self.task_dict[task][split][doc_id]
        image = self._image(doc_to_visual(doc) if doc_to_visual is not None else None, task, doc_id)
        question = self._question(context)
        prompt = self.adapter.build_prompt(self.processor, question, with_image=image is not None)
        return {"index": index, "context": context, "gen_kwargs": gen_kwargs, "until": _stops(gen_kwargs),
                "max_new_tokens": budget, "image": image, "prompt": prompt}

    def _question(self, context):
        """The task's context without image placeholders (the family's prompt adds its own)."""
        placeholders = {self.adapter.image_placeholder(self.processor), "<image>"}
        found = False
        for token in placeholders:
            if token and token in context:
                found = True
                context = re.sub(r"[ \t]*" + re.escape(token) + r"[ \t]*\n?", "", context)
        return context.strip() if found else context

    def _image(self, visuals, task, doc_id):
        from PIL import Image

        if visuals is None:
            return None
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        visuals = [v for v in visuals if v is not None]
        if not visuals:
            return None
        first = visuals[0]
        if not isinstance(first, Image.Image):
            what = "a video" if isinstance(first, (str, os.PathLike, dict)) else f"a {type(first).__name__}"
            raise DataError(f"task {task} doc {doc_id}: doc_to_visual gave {what}; the encslim lmms-eval model "
                            "takes images (PIL) only, not videos or audio")
        if len(visuals) > 1:
            self._warn_once("images", "encslim lmms-eval model: documents with several images are answered "
                                      "from their first image only (task %s doc %s has %d)", task, doc_id,
                            len(visuals))
        return first.convert("RGB") if first.mode != "RGB" else first

    def _generate(self, items, with_image, budget):
        images = [it["image"] for it in items] if with_image else None
        masked = self.masked if with_image else frozenset()
        batch = self.adapter.prepare_batch(self.processor, images, [it["prompt"] for it in items],
                                           masked=masked, mask_mode=self.mask_mode)
        device = self._model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        loaded = (self._model, self.processor, self.adapter)
        if not with_image:  # no image: no encoder runs and no mask applies (as encslim eval answers)
            return generate_texts(loaded, {}, batch, budget)
        return generate_texts(loaded, None, batch, budget, masked=self.masked, mask_mode=self.mask_mode)


def manifest():
    """The ``ModelManifest`` registering :class:`EncslimLmms` as lmms-eval model ``encslim``.

    Raises:
        ImportError: lmms-eval is not installed (``pip install 'encslim[lmms]'``).
    """
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as err:
        raise ImportError("the encslim lmms-eval model needs lmms-eval: pip install 'encslim[lmms]' "
                          f"({err})") from err
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
