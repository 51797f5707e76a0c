"""torchvision RetinaNets with seeded random weights, for parity tests (nothing is downloaded).

BatchNorm statistics and the head biases are randomised so a comparison covers every parameter and
the classifier scores land above the 0.05 threshold (detections to compare).
"""

from functools import partial

import torch
from torch import nn
from torchvision.models import resnet18, resnet50, resnet101
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

RESNETS = {18: (resnet18, 512), 50: (resnet50, 2048), 101: (resnet101, 2048)}  # builder, C5 channels


def make_torchvision_retinanet(depth: int, num_classes: int, *, v2: bool, seed: int, box_bias_std: float = 0.2):
    """v1 layout: P6 from P5, plain heads; v2: P6 from C5, GroupNorm heads."""
    torch.manual_seed(seed)
    builder, c5 = RESNETS[depth]
    extra = LastLevelP6P7(c5, 256) if v2 else LastLevelP6P7(256, 256)
    backbone = _resnet_fpn_extractor(builder(weights=None), 5, returned_layers=[2, 3, 4], extra_blocks=extra)
    head_kwargs = {}
    if v2:
        head_kwargs["head"] = RetinaNetHead(256, 9, num_classes, norm_layer=partial(nn.GroupNorm, 32))
    model = TVRetinaNet(backbone, num_classes=num_classes, **head_kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        model.head.classification_head.cls_logits.bias.normal_(-1.5, 1.0)
        model.head.regression_head.bbox_reg.bias.normal_(0.0, box_bias_std)
    return model.eval()
