"""Eagle v1's model: the multi-tower vision front end, the projector and the Llama LM.

Module tree and parameter names follow NVlabs/EAGLE exactly, so a real checkpoint loads with
strict key matching:

- ``EagleLlamaModel`` (``eagle/model/language_model/eagle_llama.py`` + ``eagle_arch.EagleMetaModel``):
  a ``LlamaModel`` with ``vision_tower`` and ``mm_projector``.
- ``MultiBackboneChannelConcatenationVisionTower``
  (``eagle/model/multimodal_encoder/multi_backbone_channel_concatenation_encoder.py``): its
  ``vision_towers`` ModuleList in ``mm_vision_tower`` order; ``forward`` resizes the one 1024 px
  input per tower (bilinear, align_corners=True), resizes each output to the 32x32 grid the same
  way and concatenates on channels.
- ``mm_projector`` (``eagle/model/multimodal_projector/builder.py``): ``mlp{N}x_gelu`` or ``linear``.

The LLM forward is the stock Llama one on ``inputs_embeds``; the image features take the places of
the image placeholder (Eagle's ``prepare_inputs_labels_for_multimodal`` splices them in at the
``-200`` positions, which the adapter does on an expanded placeholder run, with the same result).
Our class is ``EagleVisionLlamaForCausalLM``: ``EagleLlamaForCausalLM`` is also the name of vLLM's
EAGLE speculative-decoding draft model, so saved configs name ours instead.
"""

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ...tokens import budget_of, reduce_grids, scorer_for
from .configuration import EagleConfig
from .towers import tower_class


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    """The towers of ``mm_vision_tower`` and the original's resize-and-concat forward."""

    def __init__(self, config):
        super().__init__()
        self.grid_size = config.eagle_grid_size
        self.num_tokens = self.grid_size ** 2
        self.input_image_size = config.eagle_input_image_size
        self.names = list(config.tower_names)
        self.vision_towers = nn.ModuleList(tower_class(name)(config.tower_spec(name)) for name in self.names)

    def tower_features(self, index, x):
        """Tower ``index``'s features of the (B, 3, S, S) input as ``(B, grid*grid, C)``: the loop body
        of the original ``forward``."""
        tower = self.vision_towers[index]
        if tower.input_image_size != self.input_image_size:
            size = (tower.input_image_size, tower.input_image_size)
            x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).to(dtype=x.dtype)
        feature = tower(x)
        if feature.dim() == 3:
            b, n, c = feature.shape
            if n == self.num_tokens:
                return feature
            side = int(n ** 0.5)
            feature = feature.transpose(1, 2).reshape(b, c, side, side)
        if feature.shape[-1] != self.grid_size:
            feature = F.interpolate(feature.float(), size=(self.grid_size, self.grid_size), mode="bilinear",
                                    align_corners=True).to(dtype=x.dtype)
        return feature.flatten(2, 3).transpose(1, 2)

    def forward(self, x):
        return torch.cat([self.tower_features(i, x) for i in range(len(self.vision_towers))], dim=-1)

    @property
    def hidden_size(self):
        return sum(t.hidden_size for t in self.vision_towers)


def build_vision_projector(config):
    """``multimodal_projector/builder.build_vision_projector``: ``linear`` or ``mlp{N}x_gelu``."""
    kind = getattr(config, "mm_projector_type", "linear")
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if not match:
        raise ValueError(f"mm_projector_type '{kind}' is not supported; Eagle uses mlp2x_gelu")
    modules = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, int(match.group(1))):
        modules += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*modules)


class EagleLlamaModel(LlamaModel):
    """``EagleLlamaModel``: ``LlamaModel`` + ``vision_tower`` + ``mm_projector``."""

    config_class = EagleConfig

    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = MultiBackboneChannelConcatenationVisionTower(config)
        self.mm_projector = build_vision_projector(config)


class EagleVisionLlamaForCausalLM(LlamaForCausalLM):
    """``EagleLlamaForCausalLM`` of NVlabs/EAGLE (renamed, see the module docstring)."""

    config_class = EagleConfig
    _no_split_modules = ["LlamaDecoderLayer", "MultiBackboneChannelConcatenationVisionTower"]
    # EVA's RoPE tables under every block's alias: what Eagle's trainer writes (its .cpu() copies un-share
    # them); the shared rope_win / rope_glb tables hold the same values (tests/parity/eagle)
    _keys_to_ignore_on_load_unexpected = [r"\.vision_tower\.blocks\.\d+\.attn\.rope\.freqs_(cos|sin)$"]

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = EagleLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def encode_images(self, images):
        """``EagleMetaForCausalLM.encode_images``: towers, concat, projector; then the token reducer of
        ``config.token_budget`` (encslim's, absent from the original) when the config carries one."""
        return self.reduce_image_tokens(self.model.mm_projector(self.model.vision_tower(images)))

    def reduce_image_tokens(self, projected):
        """The projected ``(B, g*g, H)`` grid under ``config.token_budget`` (:mod:`encslim.models.tokens`):
        pooled, or the top-k tokens by the attention of the LLM's first layer; no budget: as it is."""
        budget = budget_of(self.config)
        if budget is None:
            return projected
        scorer = scorer_for(self) if budget.method == "attention" else None
        grid = self.config.eagle_grid_size
        return reduce_grids(projected, [(grid, grid)], budget, scorer)


class EagleVisionFrontEnd(nn.Module):
    """Pixels -> the image embeddings the LLM receives (towers, concat, projector, a pool budget's reducer)."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.mm_projector = model.model.mm_projector
        self.budget, self.grid = budget_of(model.config), model.config.eagle_grid_size

    def forward(self, pixel_values):
        projected = self.mm_projector(self.vision_tower(pixel_values))
        return reduce_grids(projected, [(self.grid, self.grid)], self.budget)


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know ``eagle_llama`` (as the original registers it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register("eagle_llama", EagleConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(EagleConfig, EagleVisionLlamaForCausalLM)
    except ValueError:
        pass
