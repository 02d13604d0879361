"""S3FD face detector (Zhang et al., 2017), VGG16 variant used by face-alignment/Wav2Lip.

Parameter names match the released ``s3fd-619a316812.pth`` state_dict, e.g.
``conv1_1.weight``, ``fc6.weight``, ``conv3_3_norm.weight``,
``conv3_3_norm_mbox_conf.weight``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (name, in_channels, out_channels, kernel, stride, padding) of the backbone, in order.
_BACKBONE: list[tuple[str, int, int, int, int, int]] = [
    ("conv1_1", 3, 64, 3, 1, 1),
    ("conv1_2", 64, 64, 3, 1, 1),
    ("conv2_1", 64, 128, 3, 1, 1),
    ("conv2_2", 128, 128, 3, 1, 1),
    ("conv3_1", 128, 256, 3, 1, 1),
    ("conv3_2", 256, 256, 3, 1, 1),
    ("conv3_3", 256, 256, 3, 1, 1),
    ("conv4_1", 256, 512, 3, 1, 1),
    ("conv4_2", 512, 512, 3, 1, 1),
    ("conv4_3", 512, 512, 3, 1, 1),
    ("conv5_1", 512, 512, 3, 1, 1),
    ("conv5_2", 512, 512, 3, 1, 1),
    ("conv5_3", 512, 512, 3, 1, 1),
    ("fc6", 512, 1024, 3, 1, 3),  # no dilation: the map grows by 4 in each dimension
    ("fc7", 1024, 1024, 1, 1, 0),
    ("conv6_1", 1024, 256, 1, 1, 0),
    ("conv6_2", 256, 512, 3, 2, 1),
    ("conv7_1", 512, 128, 1, 1, 0),
    ("conv7_2", 128, 256, 3, 2, 1),
]

# Backbone layers followed by a 2x2 max-pool.
_POOL_AFTER = frozenset({"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"})

# Detection sources in output order: (feature, channels, L2Norm scale or None, conf channels).
HEAD_SOURCES: list[tuple[str, int, float | None, int]] = [
    ("conv3_3", 256, 10.0, 4),
    ("conv4_3", 512, 8.0, 2),
    ("conv5_3", 512, 5.0, 2),
    ("fc7", 1024, None, 2),
    ("conv6_2", 512, None, 2),
    ("conv7_2", 256, None, 2),
]

# Nominal anchor stride of each detection source, in output order.
STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64, 128)


class L2Norm(nn.Module):
    """Per-position channel L2 normalisation with a learned per-channel scale.

    y = x / (sqrt(sum_c x^2) + eps) * weight, eps = 1e-10 (added after the sqrt).
    """

    def __init__(self, n_channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((n_channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


_NORMALISED = frozenset(source for source, _, scale, _ in HEAD_SOURCES if scale is not None)


def head_name(source: str) -> str:
    """Prefix of a source's head convs: L2-normalised sources use "<source>_norm"."""
    return f"{source}_norm" if source in _NORMALISED else source


class S3FD(nn.Module):
    """Single-shot scale-invariant face detector.

    forward(x (B, 3, H, W): RGB pixels minus (104, 117, 123), as the reference feeds it)
    -> list of 12 tensors [cls1, reg1, ..., cls6, reg6] for nominal strides 4, ..., 128;
    cls_i is (B, 2, h_i, w_i) logits (background, face), reg_i is (B, 4, h_i, w_i).
    The first source predicts 3 background logits which are max-reduced to one.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout, k, s, p in _BACKBONE:
            self.add_module(name, nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p))
        for source, channels, scale, _ in HEAD_SOURCES:
            if scale is not None:
                self.add_module(f"{source}_norm", L2Norm(channels, scale=scale))
        for source, channels, _, n_conf in HEAD_SOURCES:
            head = head_name(source)
            self.add_module(f"{head}_mbox_conf", nn.Conv2d(channels, n_conf, 3, 1, 1))
            self.add_module(f"{head}_mbox_loc", nn.Conv2d(channels, 4, 3, 1, 1))

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the backbone; returns the post-ReLU maps feeding the detection heads."""
        sources = {name for name, *_ in HEAD_SOURCES}
        out: dict[str, torch.Tensor] = {}
        for name, *_ in _BACKBONE:
            x = F.relu(getattr(self, name)(x))
            if name in sources:
                out[name] = x
            if name in _POOL_AFTER:
                x = F.max_pool2d(x, 2, 2)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.features(x)
        outputs: list[torch.Tensor] = []
        for source, _, scale, n_conf in HEAD_SOURCES:
            f = feats[source]
            if scale is not None:
                f = getattr(self, f"{source}_norm")(f)
            head = head_name(source)
            cls = getattr(self, f"{head}_mbox_conf")(f)
            reg = getattr(self, f"{head}_mbox_loc")(f)
            if n_conf == 4:
                # Max-out: three background logits collapse into one, face stays last.
                bg = torch.maximum(torch.maximum(cls[:, 0:1], cls[:, 1:2]), cls[:, 2:3])
                cls = torch.cat((bg, cls[:, 3:4]), dim=1)
            outputs.extend((cls, reg))
        return outputs
