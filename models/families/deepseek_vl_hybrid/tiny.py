"""A tiny random ``deepseek_vl_hybrid`` (transformers' DeepSeek-VL hybrid), for the tests and users who want to try encslim."""

import torch

HYBRID_TEXT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
HYBRID_SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "image_size": 32}
HYBRID_SAM = {"model_type": "sam_vision_model", "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "patch_size": 8, "image_size": 64, "output_channels": 16,
            "global_attn_indexes": [1], "window_size": 4}


def build_tiny_hybrid(seed=0, tokenizer=None):
    """``(model, processor)``: a tiny random ``deepseek_vl_hybrid`` (SigLIP 32 px, SAM 64 px, 16 image tokens).

    The SAM branch's weights get seeded noise on top of transformers' near-zero init (and a
    non-zero ``high_res_vision_alpha``), so that masking SAM visibly changes the output.
    """
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration, DeepseekVLHybridProcessor
    from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
        DeepseekVLHybridImageProcessorPil,
    )

    from ...tokenizer import build_tokenizer

    tokenizer = tokenizer or build_tokenizer()
    config = DeepseekVLHybridConfig(
        text_config=dict(HYBRID_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(HYBRID_SIGLIP), high_res_vision_config=dict(HYBRID_SAM),
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = DeepseekVLHybridForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.model.named_parameters():
            if name.startswith(("high_res_vision", "aligner.high_res")):
                param.add_(torch.randn_like(param) * 0.1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    side = HYBRID_SIGLIP["image_size"] // HYBRID_SIGLIP["patch_size"]
    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": HYBRID_SIGLIP["image_size"], "width": HYBRID_SIGLIP["image_size"]},
        high_res_size={"height": HYBRID_SAM["image_size"], "width": HYBRID_SAM["image_size"]},
    )
    processor = DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          num_image_tokens=side * side)
    return model, processor


def create_tiny_hybrid(out, seed=0, overwrite=False):
    """Write a tiny random ``deepseek_vl_hybrid`` folder (weights, config, processor, tokenizer) to ``out``."""
    from ....files import atomic_output_dir

    model, processor = build_tiny_hybrid(seed)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
