"""Eagle v1's vision front end for ONNX: one input per tower, made by the processor; no resampling of
pixels inside the graph.

Eagle's multi-tower encoder resizes its one 1024 px input for each tower (``F.interpolate``,
bilinear, ``align_corners=True``: 1024 -> 336 for ``clip-448``) and Pix2Struct re-samples it again
into patches (antialiased bilinear). onnxruntime's ``Resize`` computes those sampling positions
differently enough (about 2e-4 on the 1024 -> 336 pixels, 8e-4 on Pix2Struct's patches) that the
towers amplify it past 1e-4. So the export moves every input resampling out of the graph:

- :func:`tower_input_recipes` says, per tower, which graph input it takes and how it is made
  (JSON: written into ``processor_config.json`` and ``onnx_config.json``);
- :func:`make_tower_inputs` makes them from ``pixel_values`` with the very torch calls the
  model's own forward makes (so the inputs are bit-identical to what the towers see);
- :class:`EagleTowerInputsFrontEnd` is the graph: towers from their own inputs, each tower's
  features to the 32x32 grid, the channel concat and the projector, then, when the config carries a
  ``pool`` token budget, its average pooling (a plain ``AveragePool``: the graph's tokens are the ones
  the LLM reads). Its ``reference`` is the model's own path (``encode_images`` on ``pixel_values``,
  reducer included), which validation compares against. An ``attention`` budget scores tokens in the
  LLM's first layer, which the graph does not hold: the adapter refuses that export.

Feature-grid resizes (e.g. CLIP's 24x24 -> 32x32, Pix2Struct's 45x45 -> 32x32) stay in the graph:
their sampling positions are small numbers and agree between the two backends to float precision.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...llava_processing import CLIP_MEAN, CLIP_STD
from ...tokens import budget_of, reduce_grids
from .towers import tower_input_size

PIX2STRUCT = "pix2struct-1024"
RESIZE = "bilinear, align_corners=True (torch.nn.functional.interpolate)"


def tower_input_recipes(config):
    """How each tower's graph input is made from the model's ``pixel_values`` (B, 3, S, S).

    Args:
        config: an ``EagleConfig``.

    Returns:
        One JSON dict per tower in ``mm_vision_tower`` order: ``tower``, ``input`` (graph input
        name), ``shape`` (per image), ``resize_to`` (side the pixels are resized to first, or
        ``None``), ``kind`` (``pixels``, or ``pix2struct_patches`` with ``max_patches``,
        ``patch_size``, ``grid``).
    """
    from .sam_pix2struct import PIX2STRUCT_DEFAULT_SPEC, _merge_spec, pix2struct_patch_grid

    source = config.eagle_input_image_size
    recipes = []
    for name in config.tower_names:
        side = tower_input_size(name, config.tower_spec(name))
        recipe = {"tower": name, "resize_to": side if side != source else None}
        if name == PIX2STRUCT:
            spec = _merge_spec(config.tower_spec(name), PIX2STRUCT_DEFAULT_SPEC, "Pix2Struct")
            p, patches = spec["patch_size"], spec["max_patches"]
            rows, cols = pix2struct_patch_grid(side, side, patches, p, p)
            recipe.update(input=f"flattened_patches_{name}", kind="pix2struct_patches", shape=[patches, 2 + 3 * p * p],
                          max_patches=patches, patch_size=p, grid=[rows, cols],
                          how="pixels * CLIP std + CLIP mean, * 255, then Pix2Struct's patch extraction "
                              "(sam_pix2struct.pix2struct_preprocess)")
        else:
            recipe.update(input=f"pixel_values_{name}", kind="pixels", shape=[3, side, side])
        if recipe["resize_to"] is not None:
            recipe["resize"] = RESIZE
        recipes.append(recipe)
    return recipes


def make_tower_inputs(recipes, pixel_values):
    """``{input name: tensor}``: each tower's input as the model's forward computes it (torch, float32).

    Args:
        recipes: :func:`tower_input_recipes`.
        pixel_values: the processor's (B, 3, S, S) tensor.

    Returns:
        A dict in graph-input order.
    """
    from .sam_pix2struct import pix2struct_preprocess

    out = {}
    for recipe in recipes:
        x = pixel_values
        if recipe["resize_to"] is not None:  # MultiBackboneChannelConcatenationVisionTower.tower_features
            size = (recipe["resize_to"], recipe["resize_to"])
            x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).to(dtype=x.dtype)
        if recipe["kind"] == "pix2struct_patches":  # Pix2StructLargeVisionTower.forward, before the encoder
            mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = pix2struct_preprocess(((x * std + mean) * 255.0).float(), recipe["max_patches"],
                                      recipe["patch_size"])[0]
        out[recipe["input"]] = x.float().contiguous()
    return out


def _to_grid(feature, grid):
    """A tower's output -> ``(B, grid*grid, C)`` as ``tower_features`` does after the tower."""
    if feature.dim() == 3:
        b, n, c = feature.shape
        if n == grid * grid:
            return feature
        side = int(n ** 0.5)
        feature = feature.transpose(1, 2).reshape(b, c, side, side)
    if feature.shape[-1] != grid:
        feature = F.interpolate(feature.float(), size=(grid, grid), mode="bilinear",
                                align_corners=True).to(dtype=feature.dtype)
    return feature.flatten(2, 3).transpose(1, 2)


class EagleTowerInputsFrontEnd(nn.Module):
    """Per-tower inputs (:func:`make_tower_inputs`) -> the image embeddings the LLM receives."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.mm_projector = model.model.mm_projector
        self.recipes = tower_input_recipes(model.config)
        self.grid = self.vision_tower.grid_size
        self.budget = budget_of(model.config)
        if self.budget is not None and self.budget.method != "pool":
            raise ValueError(f"the ONNX front end holds the pool token reducer only, not {self.budget.label}")
        self._own_path = model.encode_images  # a bound method, not a submodule: the LLM stays out of the graph

    @property
    def input_names(self):
        return [r["input"] for r in self.recipes]

    def make_inputs(self, pixel_values):
        """The graph's inputs, in order, for the processor's ``pixel_values``."""
        return list(make_tower_inputs(self.recipes, pixel_values).values())

    def reference(self, pixel_values):
        """The model's own path on ``pixel_values`` (resizes and reducer inside): what the graph must reproduce."""
        return self._own_path(pixel_values)

    def _pix2struct(self, tower, patches, grid):
        mask = (patches.sum(dim=-1) != 0).to(patches.dtype)
        feats = tower.vision_tower(flattened_patches=patches.to(tower.dtype),
                                   attention_mask=mask.to(tower.dtype)).last_hidden_state
        rows, cols = grid
        b, _, c = feats.shape
        feats = feats[:, : rows * cols, :]
        if not tower.do_resize:
            return feats
        feats = feats.transpose(1, 2).reshape(b, c, rows, cols)
        size = (tower.grid_size, tower.grid_size)
        return F.interpolate(feats.float(), size=size, mode="bilinear", align_corners=True).to(feats.dtype)

    def forward(self, inputs):
        parts = []
        for recipe, tower, x in zip(self.recipes, self.vision_tower.vision_towers, inputs):
            if recipe["kind"] == "pix2struct_patches":
                feature = self._pix2struct(tower, x, recipe["grid"])
            else:
                feature = tower(x)
            parts.append(_to_grid(feature, self.grid))
        projected = self.mm_projector(torch.cat(parts, dim=-1))
        return reduce_grids(projected, [(self.grid, self.grid)], self.budget)  # no budget: as it is


__all__ = ["tower_input_recipes", "make_tower_inputs", "EagleTowerInputsFrontEnd"]
