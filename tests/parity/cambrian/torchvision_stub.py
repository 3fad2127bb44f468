"""A stand-in for ``torchvision`` so that timm 0.9.16 and open_clip 2.24.0 import beside a torch PyPI's
torchvision does not match (generator-only; CI never imports this file).

Real (the four transforms open_clip's eval preprocessing runs on a PIL image, as torchvision 0.17 computes
them): ``Compose``, ``Resize`` (shortest edge, PIL resample), ``CenterCrop``, ``ToTensor`` (``uint8 / 255``
in float32), ``Normalize`` (``(x - mean) / std`` in float32), and ``InterpolationMode``.
Placeholders (never called by the Cambrian towers): every other name timm and open_clip import
(``FrozenBatchNorm2d``, datasets, random augmentations, ``create_feature_extractor``); calling one raises.
"""

import enum
import importlib.machinery
import sys
import types

import numpy as np
import torch


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        w, h = img.size
        if isinstance(self.size, int) or len(self.size) == 1:
            short = self.size if isinstance(self.size, int) else self.size[0]
            if w <= h:
                size = (short, int(short * h / w))
            else:
                size = (int(short * w / h), short)
        else:
            size = (self.size[1], self.size[0])
        return img.resize(size, PIL_RESAMPLE[self.interpolation.value])


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        th, tw = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        w, h = img.size
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))


class ToTensor:
    def __call__(self, pic):
        arr = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        arr = arr.view(pic.size[1], pic.size[0], len(pic.getbands())).permute(2, 0, 1).contiguous()
        return arr.to(dtype=torch.get_default_dtype()).div(255)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub(mean).div(std)


def _placeholder(name):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"torchvision stub: {name} is not available")

    return type(name, (), {"__init__": refuse, "__call__": refuse})


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


def install():
    """Put the stub into ``sys.modules`` (before timm or open_clip is imported)."""
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
             "torchvision.ops.misc", "torchvision.datasets", "torchvision.models",
             "torchvision.models.feature_extraction", "torchvision.io"]
    modules = {n: _Module(n) for n in names}
    transforms = modules["torchvision.transforms"]
    for obj in (InterpolationMode, Compose, Resize, CenterCrop, ToTensor, Normalize):
        setattr(transforms, obj.__name__, obj)
    modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    transforms.functional = modules["torchvision.transforms.functional"]
    modules["torchvision"].__version__ = "0.17.0+stub"
    for name, module in modules.items():
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, module)
        module.__path__ = []
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = module
