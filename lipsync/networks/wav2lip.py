"""Wav2Lip generator (Prajwal et al., 2020) laid out to match the official checkpoints.

Parameter names and shapes are those of the released ``wav2lip.pth`` /
``wav2lip_gan.pth`` files (after stripping the ``module.`` prefix), e.g.
``face_encoder_blocks.0.0.conv_block.0.weight`` or ``output_block.1.weight``.
"""

from __future__ import annotations

import torch
from torch import nn

# A layer spec is (in_channels, out_channels, kernel, stride, padding, residual).
_Spec = tuple[int, int, int, int | tuple[int, int], int, bool]


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d [-> + input] -> ReLU.

    With ``residual=True`` the block input is added to the normalised
    convolution output before the activation (shapes must then agree).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return self.act(y)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (the decoder's upsampling step)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _stack(specs: list[_Spec]) -> list[nn.Module]:
    return [ConvBlock(ci, co, k, s, p, residual=r) for ci, co, k, s, p, r in specs]


def _down(cin: int, cout: int, n_res: int, stride: int | tuple[int, int] = 2) -> list[_Spec]:
    """One strided 3x3 conv followed by ``n_res`` residual 3x3 convs."""
    strided: _Spec = (cin, cout, 3, stride, 1, False)
    residual: _Spec = (cout, cout, 3, 1, 1, True)
    return [strided] + [residual] * n_res


# Face encoder: 96x96 -> 96, 48, 24, 12, 6, 3, 1 (one entry per skip connection).
_FACE_ENCODER: list[list[_Spec]] = [
    [(6, 16, 7, 1, 3, False)],
    _down(16, 32, 2),
    _down(32, 64, 3),
    _down(64, 128, 2),
    _down(128, 256, 2),
    _down(256, 512, 1),
    [(512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)],
]

# Audio encoder: mel window (1, 80, 16) -> (512, 1, 1).
_AUDIO_ENCODER: list[_Spec] = [
    *_down(1, 32, 2, stride=1),
    *_down(32, 64, 2, stride=(3, 1)),
    *_down(64, 128, 2, stride=3),
    *_down(128, 256, 1, stride=(3, 2)),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
]

# Decoder stages after the first: (cin, cout, n_res, stride, padding, output_padding).
# cin counts the concatenated skip features of the previous stage.
_DECODER_UP: list[tuple[int, int, int, int, int, int]] = [
    (1024, 512, 1, 1, 0, 0),  # 1 -> 3
    (1024, 512, 2, 2, 1, 1),  # 3 -> 6
    (768, 384, 2, 2, 1, 1),  # 6 -> 12
    (512, 256, 2, 2, 1, 1),  # 12 -> 24
    (320, 128, 2, 2, 1, 1),  # 24 -> 48
    (160, 64, 2, 2, 1, 1),  # 48 -> 96
]


def _decoder_stage(cin: int, cout: int, n_res: int, stride: int, pad: int, opad: int) -> nn.Module:
    up = ConvTransposeBlock(cin, cout, 3, stride, pad, opad)
    return nn.Sequential(up, *_stack([(cout, cout, 3, 1, 1, True)] * n_res))


class Wav2Lip(nn.Module):
    """Audio-conditioned lower-face generator.

    forward(audio_sequences (B, 1, 80, 16), face_sequences (B, 6, 96, 96))
    -> (B, 3, 96, 96) in [0, 1]. The face input stacks the masked target frame
    (channels 0-2) and the reference frame (channels 3-5), BGR in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            nn.Sequential(*_stack(stage)) for stage in _FACE_ENCODER
        )
        self.audio_encoder = nn.Sequential(*_stack(_AUDIO_ENCODER))
        first = nn.Sequential(ConvBlock(512, 512, 1, 1, 0))
        self.face_decoder_blocks = nn.ModuleList(
            [first, *(_decoder_stage(*spec) for spec in _DECODER_UP)]
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        x = face_sequences
        for stage in self.face_encoder_blocks:
            x = stage(x)
            skips.append(x)

        x = self.audio_encoder(audio_sequences)  # (B, 512, 1, 1)
        for stage, skip in zip(self.face_decoder_blocks, reversed(skips), strict=True):
            x = torch.cat((stage(x), skip), dim=1)
        return self.output_block(x)
