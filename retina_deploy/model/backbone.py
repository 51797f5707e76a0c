"""ResNet body + FPN P3-P7, with torchvision's parameter names (``body.*``, ``fpn.*``).

Keeping torchvision's names makes its RetinaNet state dicts load with at most a key rename.
"""

from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from retina_deploy.model.config import BACKBONE_CHANNELS, ModelConfig


class ResNetBody(nn.Module):
    """A torchvision ResNet without avgpool/fc that returns C3, C4, C5.

    Input [B, 3, H, W] -> [C3 [B, c3, H/8, W/8], C4 [B, c4, H/16, W/16], C5 [B, c5, H/32, W/32]].
    """

    def __init__(self, name: str, norm: str) -> None:
        super().__init__()
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)
    return conv


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(C5 or P5), P7 = conv3x3/2(relu(P6))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = _conv(in_channels, out_channels, 3, 2)
        self.p7 = _conv(out_channels, out_channels, 3, 2)

    def forward(self, x: Tensor) -> list[Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FeaturePyramid(nn.Module):
    """Top-down FPN over C3-C5 plus P6/P7: 5 maps of ``channels`` at strides 8, 16, 32, 64, 128."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int, p6_from: str) -> None:
        super().__init__()
        # One-element Sequentials reproduce torchvision's "inner_blocks.0.0.weight" names.
        self.inner_blocks = nn.ModuleList(nn.Sequential(_conv(c, channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(_conv(channels, channels, 3)) for _ in in_channels)
        self.p6_from = p6_from
        self.extra_blocks = LastLevelP6P7(in_channels[-1] if p6_from == "c5" else channels, channels)

    def forward(self, c: list[Tensor]) -> list[Tensor]:
        last_inner = self.inner_blocks[-1](c[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(c) - 2, -1, -1):
            lateral = self.inner_blocks[idx](c[idx])
            last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.extend(self.extra_blocks(c[-1] if self.p6_from == "c5" else results[-1]))
        return results


class BackboneWithFPN(nn.Module):
    """[B, 3, H, W] -> [P3, P4, P5, P6, P7], each [B, fpn_channels, H/s, W/s], s = 8..128."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.body = ResNetBody(cfg.backbone, cfg.backbone_norm)
        self.fpn = FeaturePyramid(BACKBONE_CHANNELS[cfg.backbone], cfg.fpn_channels, cfg.p6_from)
        self.out_channels = cfg.fpn_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x))


def load_backbone_weights(body: ResNetBody, path: str) -> None:
    """Load a torchvision ImageNet ResNet file (``.pth`` via weights_only, or ``.safetensors``) into ``body``.

    The classifier (``fc.*``) is dropped; any other missing or unexpected key is an error.
    """
    from retina_deploy.model.weights import load_state_dict_strict, read_state_dict

    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    source = f"{path} (a torchvision ResNet of this depth?)"
    load_state_dict_strict(body, state, source, optional_suffix="num_batches_tracked")
