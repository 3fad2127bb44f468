"""The adapter interface and its registry: the one way a stage reaches a model.

An adapter knows one model family: its encoder slots, how to read its config and build an
empty model, how to load it, how to turn images and prompts into inputs, how to split a forward
into ``encode`` (each slot's encoder once) and the rest with some slots masked (``embed`` ->
``decode`` / ``generate`` / ``next_token_logits``), which modules belong to which slot, what
trains in fine-tuning, how to build a removal plan and which stock export targets a kept set
allows. Stages call these methods and nothing else of a model: no stage reads a family's
attributes or classes. Adding a family is one package that defines an adapter and registers one
:class:`~encslim.models.registry.Family` record naming it (:mod:`encslim.models.registry`).

Most methods have a default that fits any model whose LLM is reached by
``model(inputs_embeds=..., attention_mask=...)`` (the transformers convention); a family
overrides what differs. The abstract ones are what no default can know.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelLoadError, PlanError
from .masking import FusionClass, MaskError, check_mask_set, check_slot_names
from .slots import SlotSet
from .tokens import TokenBudget, budget_applied, budget_of

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .plan import RemovalPlan

# The transformers boundary: configs, models, processors and model outputs are transformers (or
# family) objects, which mypy does not follow (setup.cfg); they are ``Any`` here, by these names.
Config = Any  # a transformers ``PretrainedConfig`` of the family
Model = Any  # a family's ``PreTrainedModel`` (or a wrapper of it: peft, DDP, DeepSpeed)
Processor = Any  # a family's processor (tokenizer and image processor)
Batch = dict[str, Any]  # model inputs by name: tensors, ``{slot: tensor}`` dicts, ``masked_slots``...
Features = dict[str, "torch.Tensor"]  # ``{slot: features}`` of :meth:`Adapter.encode`
MaskValues = Mapping[str, "torch.Tensor"]  # ``{slot: (D,) tensor}`` of ``mean`` masking
Masked = Iterable[str]  # masked slot names (a frozenset, a SlotSet's ``masked``...)


@dataclass(frozen=True)
class Slot:
    """One named vision encoder and what exists only for it.

    Attributes:
        name: the slot's name (``sam``, ``siglip``), used everywhere instead of an index.
        backbone: the vision backbone's ``model_type``.
        image_size: side of the square input image.
        num_tokens: feature tokens the slot delivers to the fusion.
        feature_dim: channels of those features.
        removal_exact: whether physically removing the slot computes exactly the masked model.
    """

    name: str
    backbone: str
    image_size: int
    num_tokens: int
    feature_dim: int
    removal_exact: bool


@dataclass(frozen=True)
class TrainableParts:
    """Module-name prefixes that fine-tuning trains, as ``named_modules`` names of the model.

    Attributes:
        language_model: the causal LM (LoRA targets are resolved inside it only).
        fusion: the fusion/projector modules (trained fully, peft ``modules_to_save``).
        encoders: ``{slot: prefix}`` of each slot's vision encoder (frozen, LoRA or full).
    """

    language_model: str
    fusion: tuple[str, ...]
    encoders: dict[str, str]


def _count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


class Adapter(ABC):
    """What encslim needs to know about one model family."""

    model_type: str = ""

    # ------------------------------------------------------------------ family and config
    def read_config(self, path: str | os.PathLike[str]) -> Config:
        """The family's config object of the model folder ``path`` (``config.json`` only).

        Raises:
            ModelLoadError: the file does not make a valid config.
        """
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"{path}/config.json does not load: {str(err).splitlines()[0]}") from err

    def empty_model(self, config: Config) -> Model:
        """The model ``config`` describes, on the meta device (no memory, no weights): for structure checks."""
        import torch
        from transformers import AutoModelForImageTextToText

        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config)

    @abstractmethod
    def slots(self, config: Config) -> list[Slot]:
        """The model's encoder slots, in fusion order: ``list[Slot]``."""

    @abstractmethod
    def fusion_class(self, config: Config) -> FusionClass:
        """The DESIGN §1 fusion class: a :class:`~encslim.models.masking.FusionClass`."""

    def fusion_settings(self, config: Config) -> dict[str, Any]:
        """The fusion's settings as a JSON-able dict (shown by ``encslim inspect``; ``type`` names it)."""
        return {}

    def slot_names(self, config: Config) -> list[str]:
        """The model's slot names, in fusion order."""
        return [s.name for s in self.slots(config)]

    def check_slots(self, config: Config, names: Iterable[str]) -> None:
        """Raise ``ConfigError`` naming the valid slots if any of ``names`` is unknown."""
        check_slot_names(self.slot_names(config), names, ConfigError)

    def check_mask(self, config: Config, masked: str | Iterable[str] | None, mask_mode: str = "removal",
                   mask_values: Mapping[str, Any] | None = None) -> frozenset[str]:
        """One mask set checked against this model (see :func:`~encslim.models.masking.check_mask_set`)."""
        checked = check_mask_set(self.slot_names(config), masked, mask_mode, mask_values)
        if checked and self.fusion_class(config) == FusionClass.SINGLE:
            raise MaskError(f"{self.model_type} has a single encoder slot; it cannot be masked")
        return checked

    def image_tokens(self, config: Config, masked: Masked = frozenset(), mask_mode: str = "removal") -> int:
        """Image tokens in the LLM sequence per image with ``masked`` slots masked.

        Only class B in removal mode loses tokens (a removed slot's tokens are gone); every other
        class keeps its token count.
        """
        slots = self.slots(config)
        budget = budget_of(config)
        grids = self.token_grids(config, masked, mask_mode) if budget is not None else None
        if grids is not None and budget is not None:
            return sum(budget.tokens_out(g) for g in grids)
        if self.fusion_class(config) == FusionClass.B:
            gone = set(masked) if mask_mode == "removal" else set()
            return sum(s.num_tokens for s in slots if s.name not in gone)
        return slots[0].num_tokens if slots else 0

    # ------------------------------------------------------------------ token budgets (models/tokens.py)
    def token_grids(self, config: Config, masked: Masked = frozenset(),
                    mask_mode: str = "removal") -> list[tuple[int, int]] | None:
        """The ``(h, w)`` token grids of one image (of one tile, for tiling families) after fusion and
        projection, in the order the LLM reads them; ``None``: this family takes no token budget.

        A family that returns grids applies :func:`encslim.models.tokens.reduce_grids` to them when it
        merges the image into the text, and its processor writes the reduced placeholder count.
        """
        return None

    def grids_per_image(self, processor: Processor, image: Any) -> int:
        """How many times :meth:`token_grids` (and the encoders) run for ``image``: 1, or its tile count."""
        return 1

    def token_budget_blockers(self, config: Config) -> list[str]:
        """Why this model cannot take a token budget (empty: it can). The default: the family has no grids."""
        if self.token_grids(config) is not None:
            return []
        return [f"{self.model_type or type(self).__name__} models take no token budget: the family has no "
                "token grid after fusion that a reducer could shorten (README, Token budgets)"]

    def check_token_budget(self, config: Config, budget: TokenBudget | None) -> None:
        """Raise ``ConfigError`` when ``budget`` (active) cannot apply to this model, with the reason."""
        if budget is None or not budget.active:
            return
        reasons = self.token_budget_blockers(config)
        if reasons:
            raise ConfigError(f"token budget {budget.label}: {reasons[0]}")

    @contextmanager
    def token_budget(self, model: Model, processor: Processor, budget: TokenBudget | None) -> Iterator[None]:
        """Run with ``budget`` (``None``: every token) in place of the model's own, model and processor alike.

        Sets ``config.token_budget`` (read by the family's model when it merges the image) and
        ``processor.token_budget`` (read when it writes the image placeholders), restoring both after.
        """
        self.check_token_budget(model.config, budget)
        had = hasattr(processor, "token_budget")
        old = getattr(processor, "token_budget", None)
        processor.token_budget = budget if budget is not None and budget.active else None
        try:
            with budget_applied(model.config, processor.token_budget):
                yield
        finally:
            if had:
                processor.token_budget = old
            else:
                del processor.token_budget

    # ------------------------------------------------------------------ loading and inputs
    @abstractmethod
    def load(self, path: str | os.PathLike[str], device: str = "cpu", dtype: torch.dtype | None = None,
             device_map: str | dict[str, Any] | None = None) -> tuple[Model, Processor]:
        """Load ``(model, processor)`` from a local folder."""

    @abstractmethod
    def prepare_batch(self, processor: Processor, images: Sequence[Any] | None, prompts: Sequence[str],
                      masked: Masked = frozenset(), mask_mode: str = "removal") -> Batch:
        """Model inputs (a dict of tensors) for images and prompts; slots masked in removal mode get no pixels.

        ``images=None`` gives the text inputs alone (prompts may still hold image tokens: cached
        features stand in for the pixels).
        """

    def build_prompt(self, processor: Processor, question: str, with_image: bool = True) -> str:
        """The model's chat prompt for ``question`` (with its image placeholder when ``with_image``)."""
        prompt: str = processor.build_prompt(question, with_image=with_image)
        return prompt

    def tokenizer(self, processor: Processor) -> Any:
        """The processor's tokenizer (the processor itself when it is one)."""
        return getattr(processor, "tokenizer", processor)

    def image_token_id(self, config: Config) -> int:
        """The id of the image placeholder token in prompts (``config.image_token_id``, the transformers convention)."""
        token_id: int = config.image_token_id
        return token_id

    def image_placeholder(self, processor: Processor) -> str:
        """The image placeholder as text in prompts (``<image>``): questions must not hold it themselves."""
        tokenizer = self.tokenizer(processor)
        placeholder: str = (getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None)
                            or "<image>")
        return placeholder

    def configure_processor(self, processor: Processor, **settings: Any) -> Processor:
        """Apply processor settings a stage's config carries (``max_tiles=6``) to a loaded processor.

        The default takes none; a family with such settings (tiling: Eagle2) overrides this.

        Returns:
            The processor, configured.

        Raises:
            ConfigError: a setting this family's processor does not have, or a bad value.
        """
        if settings:
            raise ConfigError(f"{self.model_type or type(self).__name__} models have no processor setting "
                              f"{', '.join(sorted(settings))}; drop it (only families that split images into tiles "
                              "take max_tiles)")
        return processor

    # ------------------------------------------------------------------ the split forward
    @abstractmethod
    def encode(self, model: Model, batch: Mapping[str, Any], slots: Iterable[str] | None = None) -> Features:
        """Run each slot's encoder once: ``{slot: features}`` for ``slots`` (default: every slot with pixels)."""

    @abstractmethod
    def embed(self, model: Model, features: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
              masked: Masked = frozenset(), mask_mode: str = "removal",
              mask_values: MaskValues | None = None) -> torch.Tensor:
        """Fusion + projector with ``masked`` slots masked, merged into the text: LLM ``inputs_embeds`` (B, L, H)."""

    def lm_forward(self, model: Model, **kwargs: Any) -> Any:
        """One LLM call (``inputs_embeds`` or ``input_ids``, cache, positions...): the model's output."""
        return model(**kwargs)

    def decode(self, model: Model, features: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
               masked: Masked = frozenset(), mask_mode: str = "removal", mask_values: MaskValues | None = None,
               **lm_kwargs: Any) -> Any:
        """Fusion + LLM on ``features``; returns the model output (``logits``, ``loss`` with ``labels``...)."""
        embeds = self.embed(model, features, batch, masked, mask_mode, mask_values)
        return self.lm_forward(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(embeds.device),
                               **lm_kwargs)

    def next_token_logits(self, model: Model, features: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                          masked: Masked = frozenset(), mask_mode: str = "removal",
                          mask_values: MaskValues | None = None) -> torch.Tensor:
        """Logits of the token after each row's prompt ``(B, V)`` (LEFT-padded batch), for multiple choice."""
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.decode(model, features, batch, masked, mask_mode, mask_values,
                          position_ids=positions.to(mask.device), logits_to_keep=1, use_cache=False)
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def generate(self, model: Model, features: Mapping[str, torch.Tensor] | None, batch: Mapping[str, Any],
                 masked: Masked = frozenset(), mask_mode: str = "removal", mask_values: MaskValues | None = None,
                 max_new_tokens: int = 16, **generate_kwargs: Any) -> torch.Tensor:
        """Greedy generation on a LEFT-padded batch: the new token ids ``(B, N)``.

        ``features=None`` encodes the batch's pixels first (what a deployed model does end to
        end); slots masked in removal mode are not encoded.
        """
        if features is None:
            run = [s for s in self.slot_names(model.config) if not (mask_mode == "removal" and s in set(masked))]
            features = self.encode(model, batch, run)
        embeds = self.embed(model, features, batch, masked, mask_mode, mask_values)
        kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
        mask = batch["attention_mask"].to(embeds.device)
        ids: torch.Tensor = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                           **kwargs)
        return ids

    # ------------------------------------------------------------------ modules and parameters
    @abstractmethod
    def encoders(self, model: Model) -> dict[str, nn.Module]:
        """``{slot: module}``: the module each slot runs once per image (hooks, per-tower FLOPs and timing)."""

    @abstractmethod
    def parts(self, model: Model) -> dict[str, nn.Module]:
        """``{"fusion": module, "language_model": module}``: the shared components."""

    def slot_parameters(self, model: Model) -> dict[str, dict[str, int]]:
        """Parameters that exist only for each slot: ``{slot: {"vision": n, "fusion": n}}``.

        The default credits each slot its encoder module and no fusion share; families with
        per-slot fusion weights (projector columns, K/V projections) override it.
        """
        return {slot: {"vision": _count(module), "fusion": 0} for slot, module in self.encoders(model).items()}

    def trainable_parts(self, model: Model) -> TrainableParts:
        """:class:`TrainableParts` for fine-tuning; the default finds each part's module name."""
        names = {id(m): n for n, m in model.named_modules()}
        parts = self.parts(model)
        return TrainableParts(
            language_model=names[id(parts["language_model"])],
            fusion=(names[id(parts["fusion"])],),
            encoders={slot: names[id(m)] for slot, m in self.encoders(model).items()},
        )

    # ------------------------------------------------------------------ training
    def pixel_inputs(self, processor: Processor, images: Sequence[Any], masked: Masked = frozenset()) -> Batch:
        """The pixel inputs (no text) of ``images`` for the slots not in ``masked``: training batches."""
        prompts = [self.build_prompt(processor, "") for _ in images]
        batch = self.prepare_batch(processor, images, prompts, masked=frozenset(masked), mask_mode="removal")
        return {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}

    def train_forward(self, model: Model, inputs: Mapping[str, Any], base: Model | None = None) -> Any:
        """The training loss forward: ``inputs`` from the fine-tuning collator.

        Args:
            model: the model as the trainer holds it (peft-, DDP- or DeepSpeed-wrapped); the LLM
                call goes through it, so wrappers see a forward.
            inputs: ``input_ids``, ``attention_mask``, ``labels`` and either ``image_features``
                (cached) or the pixel inputs; optional ``masked_slots`` (one mask set for the
                batch) and ``slot_keep`` (``{slot: (B,)}`` per-sample 0/1 weights: zero-masking).
            base: the unwrapped model (its encoders and fusion are called directly).
        """
        base = base if base is not None else model
        embeds, inputs, labels, _ = self.train_embeds(base, inputs)
        return self.lm_forward(model, inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=labels)

    def train_embeds(self, base: Model,
                     inputs: Mapping[str, Any]) -> tuple[torch.Tensor, Batch, torch.Tensor | None, frozenset[str]]:
        """The encode and fuse steps of :meth:`train_forward`: ``(inputs_embeds, rest of inputs,
        labels, masked slots)`` of a training batch (``base``: the unwrapped model)."""
        batch = dict(inputs)
        features = batch.pop("image_features", None)
        masked = SlotSet.from_masked(self.slot_names(base.config), batch.pop("masked_slots", None),
                                     what="batch masked_slots: ").masked
        keep = batch.pop("slot_keep", None)
        labels = batch.pop("labels", None)
        if features is None:
            run = [s for s in self.slot_names(base.config) if s not in masked]
            features = self.encode(base, batch, run)
        if keep:
            features = {s: f * keep[s].to(f).reshape(-1, *([1] * (f.dim() - 1))) if s in keep else f
                        for s, f in features.items()}
        return self.embed(base, features, batch, masked, "removal"), batch, labels, masked

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config: Config, drop: Sequence[str]) -> RemovalPlan:
        """The :class:`~encslim.models.plan.RemovalPlan` for dropping slots ``drop``.

        Raises:
            PlanError: this family cannot plan removals (the default), or the drop is invalid.
        """
        raise PlanError(f"removing encoders from a {self.model_type} model is not supported yet; "
                        "rank it with masking instead (encslim rank)")

    def export_targets(self, config: Config, kept: Sequence[str]) -> list[str]:
        """Names of the export formats available when only ``kept`` slots remain (``hf`` always)."""
        return ["hf"]

    def export_blockers(self, config: Config, kept: Sequence[str], fmt: str) -> list[str]:
        """Why export format ``fmt`` is not available when only ``kept`` slots remain: one-line reasons,
        empty exactly when ``fmt`` is among :meth:`export_targets`. Families override it to say more."""
        if fmt in self.export_targets(config, kept):
            return []
        return [f"{fmt} is not an export target of this {self.model_type} model with slot(s) {', '.join(kept)}"]

    def vision_front_end(self, model: Model, processor: Processor) -> tuple[nn.Module, dict[str, Any]] | None:
        """``(module, info)`` when this family's ONNX export is its vision front end alone, else ``None``.

        ``module(pixel_values)`` returns the image embeddings the LLM receives (encoders, fusion,
        projector); ``info`` is a JSON dict describing the pixel input (size, mean, std, tokens).
        ``None`` (the default) means the family has its own full ONNX export or none.
        """
        return None

    def export_notes(self, config: Config) -> list[str]:
        """Lines a model card of an ``hf`` export must carry about this family's folder (default: none)."""
        return []

    def how_to_load(self, folder: str | os.PathLike[str], model: Model) -> str:
        """Python code (for a model card) loading an ``hf`` export folder of ``model``; default: its stock class."""
        name = type(model).__name__
        return (f"from transformers import AutoProcessor, {name}\n"
                f"model = {name}.from_pretrained(\"{folder}\")\n"
                f"processor = AutoProcessor.from_pretrained(\"{folder}\")\n")
