"""The HF ``Trainer`` for multi-encoder models: the loss forward goes through the family's adapter.

Everything else is the stock Trainer (DeepSpeed, checkpoints, schedules). The batch carries
``input_ids``, ``attention_mask``, ``labels`` (answer tokens only, see
:mod:`encslim.finetune.collator`) and either ``image_features`` (cached encoder outputs, cast
here to the model's dtype) or the pixel inputs, plus ``slot_keep`` (per-sample encoder dropout)
or ``masked_slots`` (per-batch encoder dropout). :meth:`Adapter.train_forward` turns that into
the model's loss; the LLM call goes through the trainer's (peft/DDP/DeepSpeed) wrapper. A
distilled run's batches also carry ``distill_targets`` (the teacher's answer distributions, see
:mod:`encslim.finetune.distill`), and the loss mixes the label loss with the KL to them.
"""

from transformers import Trainer


class EncslimTrainer(Trainer):
    """``Trainer`` whose loss forward is ``adapter.train_forward``."""

    def __init__(self, *args, adapter, distill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter = adapter
        self.distill = distill  # the FinetuneConfig of a distilled run, else None
        self.distill_parts = []  # per micro-step {"ce", "kl"[, "hidden_mse"]}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        base = _unwrap(self.accelerator.unwrap_model(model))
        features = inputs.get("image_features")
        if features:
            dtype = _param_dtype(base)
            inputs["image_features"] = {k: v.to(dtype) for k, v in features.items()}
        targets = inputs.pop("distill_targets", None)
        if targets is None or self.distill is None:
            outputs = self.adapter.train_forward(model, inputs, base=base)
            loss = outputs.loss  # the mean over the batch's answer tokens, as the model's own forward computes it
            return (loss, outputs) if return_outputs else loss
        from .distill import distill_loss, student_forward

        want_hidden = bool(self.distill.distill_hidden_weight) and "hidden" in targets
        outputs, hidden = student_forward(self.adapter, model, inputs, base, want_hidden)
        loss, parts = distill_loss(outputs.loss, outputs, inputs["labels"], targets, self.distill, hidden)
        if model.training:
            self.distill_parts.append(parts)
        return (loss, outputs) if return_outputs else loss


def _unwrap(model):
    """The model under a peft wrapper: LoRA layers live inside it, so calling it runs them."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _param_dtype(model):
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return None
