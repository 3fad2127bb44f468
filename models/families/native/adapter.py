"""The native encslim family (``model_type: encslim``), all fusion classes: adapter and removal plan.

The modules are in :mod:`.modeling_encslim` (self-contained, shipped as remote code), the config
in :mod:`.configuration_encslim`, the processor in :mod:`.processing_encslim`. Per-slot modules
live in ``ModuleDict``s keyed by slot name, so the removal plan deletes keys and renumbers nothing.
"""

from pathlib import Path

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from ....errors import ConfigError, ModelLoadError
from ...adapter import Adapter, Slot
from ...capabilities import RemoteCode
from .configuration import EncslimConfig
from ...loading import load_pretrained
from ...masking import EXACT_REMOVAL, FusionClass
from ...tokens import budget_of
from .modeling import EncslimForConditionalGeneration
from .plan import removal_plan  # the plan reads config.json only (torch-free, re-exported)
from .processing import EncslimProcessor

PIXEL_PREFIX = "pixel_values_"
HERE = Path(__file__).resolve().parent
# a remote-code export ships these files, flat: {shipped name: source}
REMOTE_CODE_FILES = {"configuration_encslim.py": HERE / "configuration.py", "modeling_encslim.py": HERE / "modeling.py",
                     "processing_encslim.py": HERE / "processing.py", "masking.py": HERE.parents[1] / "masking.py",
                     "tokens.py": HERE.parents[1] / "tokens.py"}
REMOTE_MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_encslim.EncslimConfig",
    "AutoModel": "modeling_encslim.EncslimForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_encslim.EncslimForConditionalGeneration",
    "AutoProcessor": "processing_encslim.EncslimProcessor",
}
REMOTE_PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_encslim.EncslimProcessor"}
LLAVA_BACKBONES = ("clip_vision_model", "siglip_vision_model")
# model-card code loading an ``hf`` export folder of a native model
HOW_TO_LOAD = """\
import encslim
model, processor, adapter = encslim.load_model("{name}")  # refuses weights that do not fit config.json
# or with plain transformers: one line makes its Auto classes know encslim folders
#   encslim.register_transformers()
#   from transformers import AutoModelForImageTextToText, AutoProcessor
#   model = AutoModelForImageTextToText.from_pretrained("{name}")
#   processor = AutoProcessor.from_pretrained("{name}")
batch = processor(text=[processor.build_prompt("What is in the image?")], images=[image])
print(processor.batch_decode(model.generate(**batch, max_new_tokens=16)))
"""


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForImageTextToText``/``AutoProcessor`` know ``encslim``."""
    try:
        AutoConfig.register("encslim", EncslimConfig)
    except ValueError:
        pass  # already registered in this process
    try:
        AutoModelForImageTextToText.register(EncslimConfig, EncslimForConditionalGeneration)
    except ValueError:
        pass
    try:
        AutoProcessor.register(EncslimConfig, EncslimProcessor)
    except ValueError:
        pass


def _count(module):
    return sum(p.numel() for p in module.parameters())


class NativeAdapter(Adapter):
    model_type = "encslim"

    def read_config(self, path):
        try:
            return EncslimConfig.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"{path}/config.json does not load: {str(err).splitlines()[0]}") from err

    def slots(self, config):
        exact = self.fusion_class(config) in EXACT_REMOVAL
        return [
            Slot(
                name=e["name"],
                backbone=e["vision_config"]["model_type"],
                image_size=e["image_size"],
                num_tokens=config.slot_num_tokens(e["name"]),
                feature_dim=config.slot_feature_dim(e["name"]),
                removal_exact=exact,
            )
            for e in config.encoders
        ]

    def fusion_class(self, config):
        return FusionClass(config.fusion_class)

    def fusion_settings(self, config):
        return dict(config.fusion)

    def image_tokens(self, config, masked=frozenset(), mask_mode="removal"):
        gone = set(masked) if mask_mode == "removal" else set()
        kept = [s for s in config.slot_names if s not in gone]
        budget = budget_of(config)
        grids = config.token_grids(kept) if budget is not None else None
        if grids is not None:
            return sum(budget.tokens_out(g) for g in grids)
        return config.num_image_tokens(kept)

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """The fused grid (A1/A2), each present slot's grid (B; a slot masked in removal mode has no tokens),
        or the cross-attention queries (C: square when ``num_queries`` is, else one row): see
        ``EncslimConfig.token_grids``. ``None`` when a slot keeps its CLS token (B)."""
        gone = set(masked) if mask_mode == "removal" else set()
        return config.token_grids([s for s in config.slot_names if s not in gone])

    def token_budget_blockers(self, config):
        """Why this model takes no token budget: a sequence-concat slot that keeps its CLS token."""
        if config.token_grids() is not None:
            return []
        keep = [e["name"] for e in config.encoders if e["cls"] == "keep"]
        return [f"slot(s) {', '.join(keep)} keep their CLS token, so their tokens are no grid a reducer could "
                f"shorten; rebuild the model with cls 'drop'"]

    def check_token_budget(self, config, budget):
        """As the base check, and ``pool`` needs a 2-D grid: cross-attention queries that are no square
        (one row) take the ``attention`` method only."""
        super().check_token_budget(config, budget)
        if budget is None or not budget.active or budget.method != "pool":
            return
        grids = config.token_grids() or []
        if any(h == 1 and w > 1 for h, w in grids):
            raise ConfigError(f"token budget {budget.label}: the {config.fusion['num_queries']} cross-attention "
                              f"queries are no square grid, so pooling cannot keep {budget.budget:g} of them; "
                              f"use --token-method attention")

    def load(self, path, device="cpu", dtype=None, device_map=None):
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = load_pretrained(EncslimForConditionalGeneration, path, **kwargs)
        if device_map is None:
            model.to(device)
        model.eval()
        return model, EncslimProcessor.from_pretrained(path)

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        removed = masked if mask_mode == "removal" else ()
        return processor(text=prompts, images=images, masked_slots=removed)

    def pixel_inputs(self, processor, images, masked=frozenset()):
        kept = [s for s in processor.slot_names if s not in set(masked)]
        return {f"{PIXEL_PREFIX}{s}": v for s, v in processor.preprocess_images(images, kept).items()}

    def encode(self, model, batch, slots=None):
        pixels = {k[len(PIXEL_PREFIX):]: v for k, v in batch.items() if k.startswith(PIXEL_PREFIX)}
        return model.encode(pixels, slots)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        return model.embed(features, batch["input_ids"].to(model.device), masked, mask_mode, mask_values)

    def encoders(self, model):
        return dict(model.vision_towers.items())

    def parts(self, model):
        return {"fusion": model.fusion, "language_model": model.language_model}

    def slot_parameters(self, model):
        """Each slot's tower, plus its share of the fusion: its projector columns for A1 channel concat
        (none for A2, whose removal keeps them), its projector for sequence concat, its K/V for cross
        attention."""
        config, fusion = model.config, model.fusion
        kind = self.fusion_class(config)
        out = {s: {"vision": _count(t), "fusion": 0} for s, t in model.vision_towers.items()}
        for slot in out:
            if kind == FusionClass.A1:
                out[slot]["fusion"] = fusion.dims[slot] * fusion.projector[0].out_features
            elif kind == FusionClass.B:
                out[slot]["fusion"] = _count(fusion.projectors[slot])
            elif kind == FusionClass.C:
                out[slot]["fusion"] = _count(fusion.k_proj[slot]) + _count(fusion.v_proj[slot])
        return out

    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        targets = ["hf", "remote-code"] + ([] if onnx_blockers(config) else ["onnx"])
        if not llava_blockers(config, kept):
            targets.insert(1, "llava")
        return targets

    def export_blockers(self, config, kept, fmt):
        if fmt == "llava":
            return llava_blockers(config, kept)
        if fmt == "onnx" and onnx_blockers(config):
            return onnx_blockers(config)
        return super().export_blockers(config, kept, fmt)

    def llava_blockers(self, config, kept):
        """Why ``kept`` cannot become a stock LLaVA model (:func:`llava_blockers`); empty when it can."""
        return llava_blockers(config, kept)

    def to_llava(self, model, processor):
        """``(LlavaConfig, state_dict, LlavaProcessor)`` of a one-slot model (:mod:`.llava`)."""
        from .llava import to_llava

        return to_llava(model, processor, self.trainable_parts(model))

    def how_to_load(self, folder, model):
        return HOW_TO_LOAD.format(name=folder)

    def remote_code(self):
        """The native code, flat, under transformers' file names (masking: torch only)."""
        return RemoteCode(files={name: source for name, source in REMOTE_CODE_FILES.items()},
                          model_auto_map=REMOTE_MODEL_AUTO_MAP, processor_auto_map=REMOTE_PROCESSOR_AUTO_MAP)


def onnx_blockers(config):
    """Why a native model cannot become ONNX graphs (empty when it can): the ``attention`` token method's
    top-k needs a stable sort, which the ONNX exporter has no operator for (``pool`` exports)."""
    budget = budget_of(config)
    if budget is None or budget.method != "attention":
        return []
    return [f"the token budget {budget.label} keeps its top-k tokens with a stable sort, which ONNX cannot express; "
            f"export it as --format hf or remote-code, or use --token-method pool"]


def llava_blockers(config, kept=None):
    """Why a native model keeping slots ``kept`` (default: all) cannot become a stock LLaVA model.

    A list of reasons, empty when it can. Pure: reads the config only.
    """
    from .configuration import backbone_info, native_grid

    slots = list(config.slot_names) if kept is None else [s for s in config.slot_names if s in set(kept)]
    budget = budget_of(config)
    blocked = [] if budget is None else [
        f"LLaVA's stock class has no token reducer: this model applies the token budget {budget.label} "
        f"(config.json token_budget); export it as --format hf or remote-code, or remove the budget"]
    if len(slots) != 1:
        return blocked + [f"LLaVA holds one vision encoder but this model has {len(slots)} ({', '.join(slots)}); "
                          f"prune it to one first (encslim prune --drop ...)"]
    slot = slots[0]
    enc = config.encoder(slot)
    vision = config.vision_config(slot)
    reasons = []
    if vision.model_type not in LLAVA_BACKBONES:
        reasons.append(f"slot '{slot}' is a {vision.model_type} backbone; LLaVA needs CLIP or SigLIP "
                       f"({', '.join(LLAVA_BACKBONES)})")
    if config.fusion_class not in (FusionClass.A1, FusionClass.B):
        reasons.append(f"fusion class {config.fusion_class} ({config.fusion['type']}"
                       f"{', ' + config.fusion['projector'] if 'projector' in config.fusion else ''}) is not "
                       f"LLaVA's Linear-GELU-Linear projector (class A1 linear_first, or class B)")
    if not reasons:
        grid = native_grid(vision, enc["image_size"], enc["feature_layer"])
        if config.slot_grid(slot) != grid:
            reasons.append(f"slot '{slot}' is pooled from its {grid}x{grid} token grid to "
                           f"{config.slot_grid(slot)}x{config.slot_grid(slot)}; LLaVA uses the encoder's own grid")
        if backbone_info(vision)[0] != "vit":
            reasons.append(f"slot '{slot}' is not a ViT token sequence")
    return blocked + reasons


register_auto_classes()
ADAPTER = NativeAdapter()
