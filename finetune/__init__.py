"""Fine-tuning: LoRA (peft), Trainer + DeepSpeed, data collators, merge.

Public API (imported on first use, so ``import encslim.finetune`` stays light)::

    from encslim.finetune import finetune, FinetuneConfig, merge_adapter
"""

from importlib import import_module

_LAZY = {
    "finetune": "encslim.finetune.train:finetune",
    "FinetuneConfig": "encslim.finetune.config:FinetuneConfig",
    "merge_adapter": "encslim.finetune.merge:merge_adapter",
}


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'encslim.finetune' has no attribute {name!r}")
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


__all__ = list(_LAZY)
