"""ResNet backbones with frozen batch norm, named like torchvision's ResNet.

detr_ops cannot depend on torchvision (no CPU build of it here) and downloads no weights, so the
ResNet is written out. Its module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), and :class:`Backbone` keeps them under ``body`` as DETR's
``IntermediateLayerGetter`` does, so the backbone keys of a DETR / Deformable DETR checkpoint
(``backbone.0.body.layer1.0.conv1.weight``) load unchanged into ``resnet50``.

Two configurations:

* ``resnet50``: bottleneck blocks [3, 4, 6, 3], the one the published checkpoints use;
* ``resnet_small``: one basic block per stage, three stages of 32/64/128 channels (strides 4, 8,
  16), trained from scratch in seconds per epoch on a CPU. With frozen batch norm and no pretrained
  statistics the norms are identities, so each block's last conv starts at zero: every residual
  branch starts as the identity and the un-normalised stack stays well scaled while it learns.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all buffers (DETR's version).

    Detection batches are small, so batch statistics would be noisy; the pretrained ones are kept.
    The buffer names are BatchNorm2d's, so ImageNet / DETR checkpoints load into it.
    """

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # torchvision / DETR checkpoints carry BatchNorm2d's step counter, which has no use here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = FrozenBatchNorm2d(width)
        self.downsample = downsample

    def last_conv(self):
        return self.conv2

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = FrozenBatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_conv(self):
        return self.conv3

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetConfig:
    block: type
    layers: Tuple[int, ...]
    widths: Tuple[int, ...]
    stem_width: int = 64
    zero_init_residual: bool = False


CONFIGS = {
    "resnet50": ResNetConfig(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet_small": ResNetConfig(BasicBlock, (1, 1, 1), (32, 64, 128), stem_width=32, zero_init_residual=True),
}


class ResNet(nn.Module):
    """The convolutional trunk of torchvision's ResNet (no pooling head, no ``fc``)."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(config.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = config.stem_width
        self.stage_names: List[str] = []
        self.stage_channels: List[int] = []
        self.stage_strides: List[int] = []
        stride = 4
        for i, (blocks, width) in enumerate(zip(config.layers, config.widths)):
            step = 1 if i == 0 else 2
            stride *= step
            out = width * config.block.expansion
            downsample = None
            if step != 1 or cin != out:
                downsample = nn.Sequential(_conv1x1(cin, out, step), FrozenBatchNorm2d(out))
            layer = [config.block(cin, width, step, downsample)]
            layer += [config.block(out, width) for _ in range(1, blocks)]
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*layer))
            self.stage_names.append(name)
            self.stage_channels.append(out)
            self.stage_strides.append(stride)
            cin = out
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_conv().weight)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        return features


class Backbone(nn.Module):
    """ResNet trunk under ``body`` returning the last stage, or the last three for multi-scale models.

    ``forward(images, mask)`` takes the padded batch and its padding mask (True at padding) and
    returns ``[(features, mask)]``, one pair per returned stage, the mask resized to each stage.
    """

    def __init__(self, name: str = "resnet50", return_interm_layers: bool = False, train_backbone: bool = True,
                 freeze_stem: bool = True):
        super().__init__()
        if name not in CONFIGS:
            raise ValueError(f"backbone name must be one of {sorted(CONFIGS)}, got {name!r}")
        self.body = ResNet(CONFIGS[name])
        for pname, p in self.body.named_parameters():
            # DETR fine-tunes layer2.. and keeps the pretrained stem and layer1 fixed; a backbone
            # trained from scratch (freeze_stem=False) must train all of it.
            stage = pname.split(".")[0]
            if not train_backbone or (freeze_stem and stage in ("conv1", "layer1")):
                p.requires_grad_(False)
        names = self.body.stage_names
        self.return_layers = names[-3:] if return_interm_layers else names[-1:]
        index = [names.index(n) for n in self.return_layers]
        self.strides = [self.body.stage_strides[i] for i in index]
        self.num_channels = [self.body.stage_channels[i] for i in index]

    def forward(self, images, mask):
        features = self.body(images)
        out = []
        for name in self.return_layers:
            x = features[name]
            m = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out.append((x, m))
        return out


class Joiner(nn.Sequential):
    """``backbone.0`` = :class:`Backbone`, ``backbone.1`` = position encoding (DETR's key layout)."""

    def __init__(self, backbone, position_embedding):
        super().__init__(backbone, position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def forward(self, images, mask):
        features = self[0](images, mask)
        pos = [self[1](m).to(x.dtype) for x, m in features]
        return features, pos
