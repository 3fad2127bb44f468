"""Golden tiles of Eagle2's image preprocessing as the ORIGINAL code computes them.

The original: NVlabs/Eagle, ``Eagle2/inference/inference.py`` at commit
5d7476c0c3f0656723df7088e9cb3bd52fc2f158 (the parent of a5469699 "Delete Eagle2 directory"), functions
``dynamic_preprocess`` (with Eagle2's area-weighted ``find_closest_aspect_ratio``) and ``build_transform``
(``norm_type='siglip'``, what its worker picks for the MOB vision config). This script imports that file
as it is (path given on the command line; it is not copied here) and records, for a non-square 800x600
image at tile size 448 with the thumbnail on:

- ``tiles_max6``: the 7 normalised tiles at ``max_num=6`` (3x2 grid + thumbnail), stored as the uint8
  values they were normalised from (``k`` with ``tile == (k / 255 - 0.5) / 0.5`` exactly; checked here);
- ``sums_max12``: per tile, the float64 sum of each of the 13 tiles at ``max_num=12`` (4x3 + thumbnail).

Patches (see README.md): ``decord`` and ``torchvision`` are stubbed before the import (the file imports them
at its top; ``decord`` is only used for videos, and PyPI's torchvision does not import beside this CPU
torch); the torchvision stub gives the five transforms ``build_transform`` uses, with torchvision's
semantics on PIL images. Run it by hand, never in CI:

    python tests/parity/eagle2/make_tiles_golden.py /tmp/eagle2_inference.py tests/parity/eagle2/tiles
"""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

COMMIT = "5d7476c0c3f0656723df7088e9cb3bd52fc2f158"
SIZE, TILE = (800, 600), 448


def _stub_modules():
    """``decord`` (unused for images) and the torchvision transforms ``build_transform`` names."""
    sys.modules["decord"] = types.ModuleType("decord")

    class InterpolationMode:
        BICUBIC = Image.BICUBIC

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Lambda:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, x):
            return self.fn(x)

    class Resize:  # torchvision on a PIL image: PIL resize to (w, h) with the given filter
        def __init__(self, size, interpolation):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            return img.resize((self.size[1], self.size[0]), self.interpolation)

    class ToTensor:  # uint8 HWC -> float CHW in [0, 1]
        def __call__(self, img):
            return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

        def __call__(self, x):
            return (x - self.mean) / self.std

    transforms = types.ModuleType("torchvision.transforms")
    for cls in (Compose, Lambda, Resize, ToTensor, Normalize):
        setattr(transforms, cls.__name__, cls)
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def test_image():
    """A deterministic 800x600 picture with structure at every scale (compresses well as PNG)."""
    image = Image.new("RGB", SIZE)
    x, y = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    array = np.stack([(x * 255 // SIZE[0]), (y * 255 // SIZE[1]), ((x // 25 + y // 25) % 2) * 200], -1)
    image = Image.fromarray(array.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 80, 420, 380), fill=(250, 30, 30))
    draw.rectangle((500, 350, 760, 560), fill=(20, 40, 230))
    draw.line((0, 599, 799, 0), fill=(255, 255, 0), width=9)
    return image


def main(original, out):
    import transformers  # noqa: F401  (imported before the stubs: it probes for torchvision)

    _stub_modules()
    spec = importlib.util.spec_from_file_location("eagle2_inference", original)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image = test_image()
    image.save(out / "image_800x600.png")
    image = Image.open(out / "image_800x600.png")
    transform = module.build_transform(input_size=TILE, norm_type="siglip")
    tiles6 = torch.stack([transform(t) for t in module.dynamic_preprocess(image, max_num=6, image_size=TILE,
                                                                           use_thumbnail=True)])
    tiles12 = torch.stack([transform(t) for t in module.dynamic_preprocess(image, max_num=12, image_size=TILE,
                                                                            use_thumbnail=True)])
    levels = torch.round((tiles6 * 0.5 + 0.5) * 255)
    assert torch.equal((levels / 255 - 0.5) / 0.5, tiles6), "tiles are not exactly k/255 normalised"
    save_file({"tiles_max6": levels.to(torch.uint8).contiguous(), "sums_max12": tiles12.double().sum(dim=(1, 2, 3))},
              str(out / "golden.safetensors"), metadata={"original": f"NVlabs/Eagle@{COMMIT}:Eagle2/inference/inference.py",
                                                          "tile_size": str(TILE)})
    print(f"wrote {out}: {tiles6.shape[0]} tiles at max 6, {tiles12.shape[0]} at max 12")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
