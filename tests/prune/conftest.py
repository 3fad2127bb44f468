"""Fixtures of the prune tests: a tiny DeepSeek-VL hybrid, folder hashing, masked-vs-pruned logits."""

import hashlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hybrid_dir(tmp_path_factory):
    """A tiny random ``deepseek_vl_hybrid`` folder (read-only for tests)."""
    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid

    return create_tiny_hybrid(tmp_path_factory.mktemp("hybrid") / "hybrid")


@pytest.fixture
def folder_digest():
    """``folder_digest(path)`` -> {relative path: sha256} of every file, to prove a folder unchanged."""

    def digest(path):
        path = Path(path)
        return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(path.rglob("*")) if p.is_file()}

    return digest


@pytest.fixture(scope="session")
def probe_images():
    """Four seeded random RGB images, 64 px (the largest tiny encoder input)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(123)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
