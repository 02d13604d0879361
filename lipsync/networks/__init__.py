"""PyTorch definitions of the networks used by the service.

These modules exist for checkpoint conversion, tests and benchmarks only; the
serving path runs the converted OpenVINO IR and never imports torch.
"""

from lipsync.networks.s3fd import S3FD, L2Norm
from lipsync.networks.wav2lip import ConvBlock, ConvTransposeBlock, Wav2Lip

__all__ = ["S3FD", "ConvBlock", "ConvTransposeBlock", "L2Norm", "Wav2Lip"]
