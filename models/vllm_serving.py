"""What every family's vLLM model has in common: image processing info, profiling inputs, the model's frame.

Imported only by the families' ``serving`` modules, which vLLM alone imports (through
:mod:`encslim.models.vllm_plugin`'s lazy registration); this module imports vllm. A family's serving
module keeps only what differs: its towers and how they make the image embeddings, the number of tokens
``<image>`` becomes, its checkpoint key mapping and its processor call.

- :class:`ImageProcessingInfo`: images without a per-prompt limit, the most tokens per image.
- :class:`ImageDummyInputsBuilder`: one ``<image>`` and one image of the most features per image.
- :class:`FilledImageProcessor`: one ``pixel_values`` tensor per image; ``<image>`` becomes
  ``get_num_image_tokens()`` positions of :data:`IMAGE_FILL_ID` (Eagle v1 and I-MoF: LLaVA-style splicing).
- :class:`ImageTextModel`: the towers and vLLM's LLM built in vLLM's marked contexts, ``forward``,
  ``compute_logits``, and ``load_weights`` through the family's :meth:`~ImageTextModel.checkpoint_name`;
  the token budget of the folder's ``config.json`` (:func:`folder_budget`), applied by
  :meth:`~ImageTextModel.reduce_image_tokens` after the projector, as the family's transformers model applies it.
"""

from collections.abc import Iterable, Mapping
from typing import TypeVar

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo,
                                        PromptReplacement, PromptUpdateDetails)

from ..errors import ConfigError
from .layout import IMAGE_PLACEHOLDER
from .registry import get_adapter
from .tokens import budget_of, received_attention, reduce_grids

IMAGE_FILL_ID = 0  # the token id at LLaVA-style image positions (replaced by the image embeddings)

_PROCESSORS = {}  # (builder, folder) -> the folder's processor


def folder_processor(build, folder, config):
    """A model folder's processor, built once per process.

    Args:
        build: ``build(folder, config)`` makes the family's processor.
        folder: the model folder vLLM serves.
        config: its config (vLLM's ``hf_config``).

    Returns:
        The processor ``build`` made the first time it was asked for this folder.
    """
    key = (build, folder)
    if key not in _PROCESSORS:
        _PROCESSORS[key] = build(folder, config)
    return _PROCESSORS[key]


def rename_prefix(name, prefixes):
    """``name`` with the first matching checkpoint prefix replaced by the module's.

    Args:
        name: a checkpoint key.
        prefixes: ``(checkpoint prefix, module prefix)`` pairs, first match wins.

    Returns:
        The renamed key, or ``name`` itself when no prefix matches.
    """
    for old, new in prefixes:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def folder_budget(config):
    """The token budget a folder's config carries (``token_budget``) and the grids of one image (one tile) it reduces.

    Args:
        config: the folder's config (vLLM's ``hf_config``, the family's config class).

    Returns:
        ``(TokenBudget, [(h, w), ...])`` (the family adapter's ``token_grids``), or ``(None, None)``: every token.

    Raises:
        ConfigError: the family takes no budget, or not this one (the adapter's reason).
    """
    budget = budget_of(config)
    if budget is None:
        return None, None
    adapter = get_adapter(config.model_type)
    adapter.check_token_budget(config, budget)
    return budget, adapter.token_grids(config)


class _RowsOf(nn.Module):
    """A vLLM module applied to the rows of a tensor of any shape (vLLM's layers take ``(tokens, width)``)."""

    def __init__(self, module, start=0, stop=None):
        super().__init__()
        self.inner, self.start, self.stop = module, start, stop

    def forward(self, x):
        out = self.inner(x.reshape(-1, x.shape[-1]))
        out = out[0] if isinstance(out, tuple) else out  # vLLM's linear layers return (output, bias)
        out = out[:, self.start:self.stop]
        return out.reshape(*x.shape[:-1], out.shape[-1])


def first_layer_scorer(language_model, text_config):
    """The ``attention`` method's scorer on vLLM's LLM: its first decoder layer, read as
    :func:`~encslim.models.tokens.received_attention` reads a transformers one.

    vLLM's layer holds one merged ``qkv_proj``; the queries and keys are its first ``q_size`` and next ``kv_size``
    output channels (vLLM splits them so in its attention), after the layer's ``input_layernorm``; Qwen3's
    ``q_norm``/``k_norm`` apply per head. The arithmetic is then the transformers model's own.

    Args:
        language_model: vLLM's causal LM (``.model.layers``).
        text_config: the LLM's config (heads, key/value heads, head size).

    Returns:
        ``scorer(tokens (B, n, H)) -> (B, n)``.

    Raises:
        ConfigError: the first layer is not laid out so (no ``qkv_proj``, ``q_size``, ``kv_size``).
    """
    layer = language_model.model.layers[0]
    attn = getattr(layer, "self_attn", None)
    if not all(hasattr(attn, name) for name in ("qkv_proj", "q_size", "kv_size")) \
            or not hasattr(layer, "input_layernorm"):
        raise ConfigError(f"the attention token method cannot score tokens in vLLM's {type(layer).__name__} (no "
                          "merged qkv_proj); use the pool method")
    view = nn.Module()
    view.input_layernorm = _RowsOf(layer.input_layernorm)
    view.self_attn = nn.Module()
    view.self_attn.q_proj = _RowsOf(attn.qkv_proj, 0, attn.q_size)
    view.self_attn.k_proj = _RowsOf(attn.qkv_proj, attn.q_size, attn.q_size + attn.kv_size)
    if hasattr(attn, "q_norm"):
        view.self_attn.q_norm, view.self_attn.k_norm = _RowsOf(attn.q_norm), _RowsOf(attn.k_norm)
    return lambda part: received_attention(part, view, text_config)


def stack_images(pixels):
    """One batch tensor from vLLM's ``pixel_values`` (a tensor, or a list of per-image tensors of one shape)."""
    return torch.stack(list(pixels)) if isinstance(pixels, (list, tuple)) else pixels


class ImageProcessingInfo(BaseProcessingInfo):
    """Images only, any number per prompt; the most tokens one image gives is :meth:`max_image_tokens`, for
    a square image of side :meth:`image_side` unless a subclass overrides ``get_image_size_with_most_features``."""

    def get_supported_mm_limits(self):
        return {"image": None}

    def image_side(self):
        """The side of the square image that gives the most features (the family's input size)."""
        raise NotImplementedError

    def get_image_size_with_most_features(self):
        side = self.image_side()
        return ImageSize(width=side, height=side)

    def budget_tokens(self, full):
        """Tokens one image (one tile) gives under the folder's token budget (:func:`folder_budget`): each grid
        keeps ``budget.tokens_out(grid)``; ``full`` where the folder has no budget."""
        budget, grids = folder_budget(self.get_hf_config())
        return full if budget is None else sum(budget.tokens_out(grid) for grid in grids)

    def max_image_tokens(self):
        """The most tokens one image gives (default: ``get_num_image_tokens()``, the same for every image)."""
        return self.get_num_image_tokens()

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"image": self.max_image_tokens()}


_Info = TypeVar("_Info", bound=ImageProcessingInfo)


class ImageDummyInputsBuilder(BaseDummyInputsBuilder[_Info]):
    """Profiling inputs: one ``<image>`` and one image of the most features (``get_image_size_with_most_features``)
    per image."""

    def get_dummy_text(self, mm_counts):
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        size = self.info.get_image_size_with_most_features()
        return {"image": self._get_dummy_images(width=size.width, height=size.height,
                                                num_images=mm_counts.get("image", 0),
                                                overrides=(mm_options or {}).get("image"))}


class FilledImageProcessor(BaseMultiModalProcessor[_Info]):
    """Images -> ``pixel_values`` (the family processor's ``pixel_values(images)``); the tokens of ``<image>`` (as the
    tokenizer encodes it alone) -> ``get_num_image_tokens()`` positions of :data:`IMAGE_FILL_ID`."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        images = list(hf_data.get("images") or [])
        return BatchFeature({"pixel_values": self.info.get_hf_processor().pixel_values(images)})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        tokens = [IMAGE_FILL_ID] * self.info.get_num_image_tokens()
        target = self.info.get_tokenizer().encode(IMAGE_PLACEHOLDER, add_special_tokens=False)
        return [PromptReplacement(modality="image", target=target,
                                  replacement=PromptUpdateDetails.from_seq(tokens))]


class ImageTextModel(nn.Module, SupportsMultiModal):
    """A family's vLLM model: its towers (:meth:`build_towers`) and vLLM's LLM (``self.language_model``).

    A subclass builds its towers in :meth:`build_towers`, implements ``embed_multimodal`` (passing its projected
    tokens through :meth:`reduce_image_tokens`), and maps checkpoint keys in :meth:`checkpoint_name`; where its LLM
    is not a Llama in the model's own config, it overrides :meth:`text_config`, :meth:`language_architectures` and
    :meth:`image_token_id`. The folder's token budget (:func:`folder_budget`) is read here: a family that takes none
    refuses a budgeted folder (``ConfigError``); the ``attention`` method scores with the LLM's first decoder layer
    (:func:`first_layer_scorer`) in an engine without tensor or pipeline parallelism (a rank would hold only part
    of the heads, or not that layer).
    """

    @classmethod
    def get_placeholder_str(cls, modality, i):
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError("only images are supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.token_budget, self.budget_grids = folder_budget(config)
        if self.token_budget is not None and self.token_budget.method == "attention":
            parallel = vllm_config.parallel_config
            if parallel.tensor_parallel_size > 1 or parallel.pipeline_parallel_size > 1:
                raise ConfigError("the attention token method scores tokens with the whole first decoder layer; "
                                  "serve this folder without tensor or pipeline parallelism, or use the pool method")
        text_config = self.text_config(config)
        self.configure_mm_token_handling(vocab_size=text_config.vocab_size,
                                         mm_token_ids=[self.image_token_id(vllm_config)])
        with self._mark_tower_model(vllm_config, "image"):
            self.build_towers(vllm_config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=text_config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=self.language_architectures(text_config))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        self.token_scorer = None
        if self.token_budget is not None and self.token_budget.method == "attention":
            self.token_scorer = first_layer_scorer(self.language_model, text_config)

    def text_config(self, config):
        """The LLM's config within the model's (default: the model's config itself)."""
        return config

    def language_architectures(self, text_config):
        """vLLM's architecture names for the LLM (default ``["LlamaForCausalLM"]``)."""
        return ["LlamaForCausalLM"]

    def image_token_id(self, vllm_config):
        """The token id of the positions that receive image embeddings (default :data:`IMAGE_FILL_ID`)."""
        return IMAGE_FILL_ID

    def build_towers(self, vllm_config):
        """Build the vision modules as attributes of ``self`` (``self.config`` is set)."""
        raise NotImplementedError

    def checkpoint_name(self, name):
        """The module path a checkpoint key loads into, or ``None`` for a key not loaded (default: the key)."""
        return name

    def reduce_image_tokens(self, tokens, grids=None):
        """The folder's token budget applied to projected image tokens, each grid on its own.

        Args:
            tokens: ``(B, sum h*w, H)``: B images (or tiles), each laid out as ``grids``.
            grids: the ``(h, w)`` grids of one row (default: all of :func:`folder_budget`'s).

        Returns:
            ``(B, sum tokens_out(grid), H)`` (``tokens`` itself where the folder has no budget).
        """
        grids = self.budget_grids if grids is None else grids
        return reduce_grids(tokens, grids, self.token_budget, self.token_scorer)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a checkpoint's tensors, names mapped by :meth:`checkpoint_name` (``None``: skipped).

        Returns:
            The names of the parameters loaded.
        """
        mapped = ((self.checkpoint_name(name), tensor) for name, tensor in weights)
        return AutoWeightsLoader(self).load_weights((name, t) for name, t in mapped if name is not None)


__all__ = ["IMAGE_FILL_ID", "FilledImageProcessor", "ImageDummyInputsBuilder", "ImageProcessingInfo",
           "ImageTextModel", "first_layer_scorer", "folder_budget", "folder_processor", "rename_prefix",
           "stack_images"]
