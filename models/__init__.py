"""Model families: the native multi-encoder architecture, adapters and their registry.

Importing this package is cheap; torch and transformers load with the submodules that need
them (``encslim.models.families.native.adapter`` registers the native family with the transformers Auto classes).
"""
