"""The core every stage uses: the adapter interface, the family registry, the model folder read once,
masking, removal plans and their one executor; ``models/families/<name>/`` holds one package per family.

Importing this package is cheap; torch and transformers load with the submodules that need them.
Stages reach a family through :mod:`encslim.models.registry` and its adapter, never by importing a
family package.
"""
