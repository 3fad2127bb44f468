"""The ConvNeXt tower that Eagle v1, Eagle2 and Cambrian-1 share (timm's ConvNeXt, Eagle's module tree).

Follows ``eagle/model/multimodal_encoder/convnext_encoder.py`` (``ConvNextVisionTower``) over
``eagle/model/multimodal_encoder/vision_models/convnext.py`` of NVlabs/EAGLE, Eagle's modified copy of
timm's ConvNeXt (``convnext_xxlarge``: depths 3/4/30/3, dims 384/768/1536/3072, norm eps 1e-5);
NVlabs/Eagle's Eagle2 code vendors the same two files. Re-implemented with the same module tree
instead of importing timm: Eagle vendors the file itself (its layer scale is ``<block>.weight`` where
timm says ``gamma``; Cambrian's open_clip trunk renames ``gamma`` to ``weight`` when it loads), and
timm cannot be imported without torchvision.

:class:`ConvNeXt` is the trunk (stem, 4 stages, the unused classifier head); :class:`ConvNextVisionTower`
holds it as ``vision_tower`` (the checkpoints' key names) and returns the last stage as ``(B, H*W, C)``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .layout import Mlp, tower_spec  # Mlp: timm's, as convnext.py's blocks use it

CONVNEXT_DEFAULT_SPEC = {  # convnext_xxlarge as convnext.py builds it
    "depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-5, "ls_init_value": 1e-6,
    "head_classes": 1000, "input_image_size": 1024,
}


class LayerNorm2d(nn.LayerNorm):
    """timm ``LayerNorm2d``: LayerNorm over channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """convnext.py ``ConvNeXtBlock`` (conv_mlp False): dw 7x7 -> LayerNorm (channels last) -> Mlp -> layer scale.

    The layer scale is the parameter ``weight`` (Eagle's rename of timm's ``gamma``).
    """

    def __init__(self, dim, eps, ls_init_value):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim)
        self.weight = nn.Parameter(ls_init_value * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        return x.mul(self.weight.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtStage(nn.Module):
    """convnext.py ``ConvNeXtStage``: optional downsample (LayerNorm2d + 2x2 stride-2 conv), then blocks."""

    def __init__(self, in_chs, out_chs, depth, stride, eps, ls_init_value):
        super().__init__()
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=eps),
                                            nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=stride, bias=True))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, eps, ls_init_value) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
    """timm ``NormMlpClassifierHead`` (no hidden layer): in the checkpoint, never run by Eagle."""

    def __init__(self, dim, num_classes, eps):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes)


class ConvNeXt(nn.Module):
    """convnext.py ``ConvNeXt`` with the patch stem (4x4 stride 4 conv + LayerNorm2d) and 4 stages."""

    def __init__(self, depths, dims, norm_eps, ls_init_value, head_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4, bias=True),
                                  LayerNorm2d(dims[0], eps=norm_eps))
        stages, prev = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(prev, dim, depth, 1 if i == 0 else 2, norm_eps, ls_init_value))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.norm_pre = nn.Identity()
        if head_classes:
            self.head = NormMlpClassifierHead(prev, head_classes, norm_eps)


class ConvNextVisionTower(nn.Module):
    """``convnext-1024``: ``ConvNextVisionTower.forward``: stem, every stage, last stage as ``(B, H*W, C)``.

    ``head_classes`` sizes the unused classifier head the checkpoint carries (0: none);
    the loader reads it from the checkpoint.
    """

    def __init__(self, spec=None):
        super().__init__()
        spec = tower_spec(CONVNEXT_DEFAULT_SPEC, spec)
        self.input_image_size = spec["input_image_size"]
        self.vision_tower = ConvNeXt(spec["depths"], spec["dims"], spec["norm_eps"], spec["ls_init_value"],
                                     spec["head_classes"])
        self.hidden_size = spec["dims"][-1]

    def forward(self, images):
        x = self.vision_tower.stem(images.to(self.vision_tower.stem[0].weight.dtype))
        for stage in self.vision_tower.stages:
            x = stage(x)
        b, c = x.shape[:2]
        return x.view(b, c, -1).transpose(1, 2)
