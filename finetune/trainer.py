"""The HF ``Trainer`` for multi-encoder models: cached features arrive in the model's dtype.

Everything else is the stock Trainer: the model's own forward computes the loss from ``labels``
(answer tokens only, see :mod:`encslim.finetune.collator`), DeepSpeed and checkpoints work as
for any transformers model. The batch may carry ``image_features`` (cached encoder outputs),
``slot_keep`` (per-sample encoder dropout) and ``masked_slots`` (per-batch encoder dropout),
which the native forward accepts.
"""

from transformers import Trainer


class EncslimTrainer(Trainer):
    """``Trainer`` that casts cached encoder features to the dtype of the model's parameters."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        features = inputs.get("image_features")
        if features:
            dtype = _param_dtype(self.accelerator.unwrap_model(model))
            inputs["image_features"] = {k: v.to(dtype) for k, v in features.items()}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


def _param_dtype(model):
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return None
