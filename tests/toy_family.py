"""A model family defined in the tests alone (``toyvlm``), registered by the tests that drive it.

Two tiny encoders of its own (a strided conv at 32 px, a linear patch embedding at 16 px), channel
concat (class A1) into a Linear-GELU-Linear projector, and a stock transformers Llama. Its config,
modules, processor, adapter and tiny builder live here and nowhere else: if any stage reached past the
adapter into the native family's attributes, the conformance suite (tests/test_conformance.py) and
tests/test_toy_family.py would fail on it. :func:`registered` adds it to the registry (and to
``encslim create-tiny --family``) for as long as a test needs it.
"""

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from encslim.files import atomic_output_dir
from encslim.models.adapter import Adapter, Slot
from encslim.models.masking import FusionClass, check_mask_set, mask_feature
from encslim.models.plan import Delete, RemovalPlan, Slice, check_drop
from encslim.models.registry import Family, register_family, unregister_family

TOY = "toyvlm"
PROCESSOR_FILE = "toy_processor.json"
ENCODERS = [{"name": "conv", "image_size": 32, "dim": 24}, {"name": "patch", "image_size": 16, "dim": 12}]
GRID = 4  # every encoder delivers a 4x4 token grid


# ---------------------------------------------------------------------------- config and modules
class ToyConfig(PretrainedConfig):
    model_type = TOY

    def __init__(self, encoders=None, text_config=None, image_token_id=4, **kwargs):
        self.encoders = [dict(e) for e in (encoders or ENCODERS)]
        text = text_config if text_config is not None else {}
        self.text_config = LlamaConfig(**text) if isinstance(text, dict) else text
        self.image_token_id = image_token_id
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        out["text_config"] = self.text_config.to_dict()
        return out


class ConvEncoder(nn.Module):
    def __init__(self, dim, size):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, kernel_size=size // GRID, stride=size // GRID)

    def forward(self, pixels):
        return self.conv(pixels).flatten(2).transpose(1, 2)


class PatchEncoder(nn.Module):
    def __init__(self, dim, size):
        super().__init__()
        self.patch = size // GRID
        self.proj = nn.Linear(3 * self.patch * self.patch, dim)

    def forward(self, pixels):
        b = pixels.shape[0]
        x = pixels.unfold(2, self.patch, self.patch).unfold(3, self.patch, self.patch)
        return self.proj(x.permute(0, 2, 3, 1, 4, 5).reshape(b, GRID * GRID, -1))


class ToyForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig
    base_model_prefix = "toy"

    def __init__(self, config):
        super().__init__(config)
        kinds = {"conv": ConvEncoder, "patch": PatchEncoder}
        self.towers = nn.ModuleDict({e["name"]: kinds[e["name"]](e["dim"], e["image_size"]) for e in config.encoders})
        hidden = config.text_config.hidden_size
        self.projector = nn.Sequential(nn.Linear(sum(e["dim"] for e in config.encoders), hidden), nn.GELU(),
                                       nn.Linear(hidden, hidden))
        self.llm = LlamaForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.llm.get_output_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None, **kwargs):
        out = self.llm(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                       labels=labels, **kwargs)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values)


class ToyProcessor:
    """Resizes an image to each encoder's size; tokenises prompts with the image token expanded."""

    def __init__(self, tokenizer, encoders):
        self.tokenizer = tokenizer
        self.encoders = [dict(e) for e in encoders]
        self.image_token = "<image>"

    def to_dict(self):
        return {"encoders": self.encoders}

    def pixels(self, images, slots):
        out = {}
        for e in self.encoders:
            if e["name"] in slots:
                arrays = [np.asarray(im.convert("RGB").resize((e["image_size"],) * 2), np.float32) / 255.0
                          for im in images]
                out[f"pixels_{e['name']}"] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return out

    def save_pretrained(self, folder):
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(self.to_dict()), encoding="utf-8")
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder):
        from transformers import AutoTokenizer

        data = json.loads(Path(folder, PROCESSOR_FILE).read_text(encoding="utf-8"))
        return cls(AutoTokenizer.from_pretrained(str(folder)), data["encoders"])


# ---------------------------------------------------------------------------- the adapter
def _count(module):
    return sum(p.numel() for p in module.parameters())


class ToyAdapter(Adapter):
    model_type = TOY

    def read_config(self, path):
        return ToyConfig.from_pretrained(str(path))

    def empty_model(self, config):
        with torch.device("meta"):
            return ToyForConditionalGeneration(config)

    def slots(self, config):
        return [Slot(e["name"], e["name"], e["image_size"], GRID * GRID, e["dim"], True) for e in config.encoders]

    def fusion_class(self, config):
        return FusionClass.A1

    def load(self, path, device="cpu", dtype=None, device_map=None):
        model = ToyForConditionalGeneration.from_pretrained(str(path), **({"dtype": dtype} if dtype else {}))
        return model.to(device).eval(), ToyProcessor.from_pretrained(path)

    def build_prompt(self, processor, question, with_image=True):
        return (f"{processor.image_token}\n" if with_image else "") + f"Q: {question} A:"

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        texts = [p.replace(processor.image_token, processor.image_token * GRID * GRID) for p in prompts]
        batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        if images is not None:
            skip = set(masked) if mask_mode == "removal" else set()
            batch.update(processor.pixels(images, [e["name"] for e in processor.encoders if e["name"] not in skip]))
        return batch

    def encode(self, model, batch, slots=None):
        wanted = self.slot_names(model.config) if slots is None else slots
        return {s: model.towers[s](batch[f"pixels_{s}"].to(model.device, model.dtype))
                for s in wanted if f"pixels_{s}" in batch}

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        ids = batch["input_ids"].to(model.device)
        embeds = model.get_input_embeddings()(ids)
        if not features:
            return embeds
        masked = check_mask_set(self.slot_names(model.config), masked, mask_mode, mask_values)
        ref = next(iter(features.values()))
        parts = [mask_feature(ref, e["dim"], mask_mode, (mask_values or {}).get(e["name"])) if e["name"] in masked
                 else features[e["name"]] for e in model.config.encoders]
        image = model.projector(torch.cat(parts, dim=-1))
        positions = (ids == model.config.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(positions, image.to(embeds.dtype))

    def encoders(self, model):
        return dict(model.towers.items())

    def parts(self, model):
        return {"fusion": model.projector, "language_model": model.llm}

    def slot_parameters(self, model):
        hidden = model.projector[0].out_features
        return {e["name"]: {"vision": _count(model.towers[e["name"]]), "fusion": e["dim"] * hidden}
                for e in model.config.encoders}

    def removal_plan(self, config, drop):
        slots = self.slot_names(config)
        drop = check_drop(slots, drop)
        dims = {e["name"]: e["dim"] for e in config.encoders}
        keep, removed, offset = [], {}, 0
        for slot in slots:
            span = (offset, offset + dims[slot])
            offset = span[1]
            if slot in drop:
                removed[slot] = span
            else:
                keep.append(span)
        ops = [{"op": "remove_items", "path": "encoders", "field": "name", "values": drop}]
        return RemovalPlan(
            model_type=TOY, fusion_class="A1", slots=slots, drop=drop,
            delete_keys=[Delete(f"towers.{s}.", s) for s in drop],
            slices=[Slice("projector.0.weight", 1, offset, tuple(keep), removed)],
            config_patch=ops, processor_patch={PROCESSOR_FILE: ops},
        )


# ---------------------------------------------------------------------------- tiny model and registration
def create(out, *, seed=0, overwrite=False):
    """``create-tiny --family toyvlm``: write a tiny random toy folder (weights, processor, tokenizer) to ``out``."""
    from encslim.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 256,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}
    config = ToyConfig(text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = ToyForConditionalGeneration(config).eval()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        ToyProcessor(tokenizer, config.encoders).save_pretrained(tmp)
    return None


ADAPTER = ToyAdapter()


def family():
    """The toy's :class:`Family` record (its tiny builder named by this module's own import name)."""
    return Family(name=TOY, description="a family defined in the tests alone", adapters={TOY: ADAPTER},
                  tiny=f"{__name__}:create")


@contextlib.contextmanager
def registered():
    """Register the toy family for the ``with`` block (``create-tiny`` offers it: the CLI builds that command
    from the registry when it is invoked)."""
    register_family(family())
    try:
        yield ADAPTER
    finally:
        unregister_family(TOY)
