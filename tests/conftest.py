"""Shared fixtures: tiny seeded models, built once per session."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(fusion="A1", encoders=("clip", "siglip", "dinov2"))`` -> folder.

    Folders are cached per argument set for the whole session; treat them as read-only.
    """
    from encslim.models.tiny import create_tiny

    cache = {}

    def make(fusion="A1", encoders=("clip", "siglip", "dinov2"), text="llama", seed=0):
        key = (fusion, tuple(encoders), text, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("tiny") / f"{fusion}-{'-'.join(encoders)}-{text}-{seed}"
            create_tiny(out, fusion=fusion, encoders=tuple(encoders), text=text, seed=seed)
            cache[key] = out
        return cache[key]

    return make
