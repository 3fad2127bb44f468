"""What trains: LoRA inside the LLM only, the fusion fully, encoders frozen/LoRA/full; exact parameter counts."""

import pytest
from torch import nn

from encslim.errors import ConfigError
from encslim.finetune.config import FinetuneConfig
from encslim.finetune.trainable import llm_lora_targets, prepare_trainable
from encslim.models.registry import get_adapter

ADAPTER = get_adapter("encslim")
from encslim.models.families.native.tiny import build_tiny


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def _lora_params(model, names, r):
    return sum(r * (m.in_features + m.out_features) for n, m in model.named_modules() if n in names)


def test_lora_targets_hit_the_llm_only_and_counts_are_exact():
    model, _ = build_tiny("A1", seed=0)
    names = llm_lora_targets(model, ("q_proj", "v_proj"), "language_model")
    assert names == [f"language_model.model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    encoder_q = [n for n, _ in model.named_modules() if n.startswith("vision_towers.") and n.endswith("q_proj")]
    assert len(encoder_q) == 6  # clip, siglip and dinov2 all have their own q_proj
    expected = _lora_params(model, names, 8) + _numel(model.fusion)
    peft_model, summary = prepare_trainable(model, ADAPTER, FinetuneConfig(lora_r=8))
    lora = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
    assert len(lora) == 4 and all(n.startswith("base_model.model.language_model.") for n in lora)
    base = peft_model.get_base_model()
    assert all(type(base.get_submodule(n)) is nn.Linear for n in encoder_q)  # the encoders' q_proj got no adapter
    assert summary["trainable"] == expected == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert summary["modules_to_save"] == ["fusion"] and summary["lora_modules"] == 4


def test_all_linear_and_unknown_targets():
    model, _ = build_tiny("A1", seed=0)
    names = llm_lora_targets(model, ("all-linear",), "language_model")
    assert len(names) == 14 and not any(n.endswith("lm_head") for n in names)
    with pytest.raises(ConfigError, match=r"LoRA target\(s\) qkv match no linear layer of the language model; its "
                                          r"linear layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, "
                                          r"v_proj"):
        llm_lora_targets(model, ("q_proj", "qkv"), "language_model")


def test_encoder_lora_encoder_full_and_full_finetuning():
    model, _ = build_tiny("C", seed=0)
    towers, llm, fusion = _numel(model.vision_towers), _numel(model.language_model), _numel(model.fusion)
    enc_linear = [n for n, m in model.named_modules() if n.startswith("vision_towers.") and isinstance(m, nn.Linear)]
    llm_names = llm_lora_targets(model, ("q_proj", "v_proj"), "language_model")
    expected = _lora_params(model, llm_names + enc_linear, 4) + fusion
    peft_model, summary = prepare_trainable(model, ADAPTER, FinetuneConfig(lora_r=4, train_encoders="lora"))
    assert summary["trainable"] == expected and summary["lora_modules"] == len(llm_names) + len(enc_linear)

    model, _ = build_tiny("C", seed=0)
    peft_model, summary = prepare_trainable(model, ADAPTER, FinetuneConfig(lora_r=4, train_encoders="full"))
    assert summary["modules_to_save"] == ["fusion", "vision_towers.clip", "vision_towers.siglip",
                                          "vision_towers.dinov2"]
    assert summary["trainable"] == _lora_params(model, llm_names, 4) + fusion + towers

    model, _ = build_tiny("C", seed=0)
    plain, summary = prepare_trainable(model, ADAPTER, FinetuneConfig(full=True))
    assert plain is model and summary["trainable"] == llm + fusion and summary["lora_modules"] == 0
    assert not any(p.requires_grad for p in model.vision_towers.parameters())


def test_config_rejects_bad_combinations_all_at_once():
    with pytest.raises(ConfigError) as err:  # every field problem together, one line
        FinetuneConfig(encoder_dropout=1.5, train_encoders="half", lora_r=0)
    message = str(err.value)
    assert "\n" not in message and message.startswith("FinetuneConfig: 3 problem(s): ")
    for phrase in ("'encoder_dropout': Input should be less than 1, got 1.5",
                   "'train_encoders': Input should be 'none', 'lora' or 'full', got 'half'", "'lora_r'"):
        assert phrase in message
    with pytest.raises(ConfigError) as err:  # then every cross-field problem together
        FinetuneConfig(full=True, merge=True, train_encoders="lora", distill_top_k=3)
    assert str(err.value).count("; ") == 2 and "--merge" not in str(err.value)
    assert "--full with --train-encoders lora" in str(err.value) and "need --distill-from" in str(err.value)
    with pytest.raises(ConfigError, match="unknown finetune option"):
        FinetuneConfig.from_dict({"lora_rank": 8})
    assert FinetuneConfig(lora_targets="q_proj, k_proj").lora_targets == ("q_proj", "k_proj")
