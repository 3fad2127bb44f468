"""Fine-tuning a folder that carries a token budget trains under it: the collator's prompts hold the reduced
placeholder count, the model reads the reduced tokens, and the output keeps the budget."""

import json

import torch

from encslim.finetune.collator import FinetuneCollator
from encslim.finetune.inputs import model_examples
from encslim.finetune.train import finetune
from encslim.models.loading import load_model


def test_lora_finetune_runs_under_the_folders_budget(tiny_model_dir, ft_data, sample_factory, tmp_path):
    from encslim.prune.surgery import prune

    pooled = tmp_path / "pooled"
    prune(tiny_model_dir("A1"), ["siglip"], pooled, token_budget=0.25, verify=False)
    model, processor, adapter = load_model(pooled)
    examples = model_examples(model, processor, adapter, sample_factory(4), "eval")
    collator = FinetuneCollator(examples, processor, adapter, model.config,
                                adapter.tokenizer(processor).pad_token_id)
    batch = collator(range(4))
    image_id = adapter.image_token_id(model.config)
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [4, 4, 4, 4]  # 16 tokens pooled 2x2
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items()}).loss  # the reduced tokens fill the 4 placeholders
    assert torch.isfinite(loss)

    out = tmp_path / "tuned"
    summary = finetune(pooled, ft_data, out, max_steps=2, batch_size=4, merge=True, progress=False)
    assert summary["steps"] == 2 and summary["token_budget"] == {"method": "pool", "budget": 0.25, "image_tokens": 4}
    assert json.loads((out / "config.json").read_text())["token_budget"] == {"method": "pool", "budget": 0.25}
    assert json.loads((out / "finetune.json").read_text())["token_budget"]["image_tokens"] == 4
