"""encslim: find and remove redundant vision encoders in multi-encoder multimodal LLMs.

The public API is imported lazily so that ``import encslim`` (and ``encslim --help``) stays
fast: torch and transformers load only when a function that needs them is first used. For the
same reason the Auto classes of transformers learn the encslim families on request:
``encslim.register_transformers()``.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> "module:attribute", resolved on first access
_LAZY = {
    "EncslimError": "encslim.errors:EncslimError",
    "load_model": "encslim.models.loading:load_model",
    "create_tiny": "encslim.models.families.native.tiny:create_tiny",
    "inspect_model": "encslim.models.inspect:inspect_model",
    "get_adapter": "encslim.models.registry:get_adapter",
    "register_family": "encslim.models.registry:register_family",
    "Family": "encslim.models.registry:Family",
    "EncslimConfig": "encslim.models.families.native.configuration:EncslimConfig",
    "EncslimForConditionalGeneration": "encslim.models.families.native.modeling:EncslimForConditionalGeneration",
    "EncslimProcessor": "encslim.models.families.native.processing:EncslimProcessor",
    "export_model": "encslim.export:export_model",
    "rank": "encslim.prune.rank:rank",
    # not "prune": that name is the subpackage encslim.prune (an attribute once it is imported)
    "prune_model": "encslim.prune.surgery:prune",
    "register_transformers": "encslim.models.registry:register_transformers",
}


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'encslim' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["__version__", *_LAZY]
