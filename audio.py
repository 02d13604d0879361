"""The design card's audio module: decoding and Wav2Lip mel features live in `lipsync.audio`."""

from lipsync.audio import *  # noqa: F403
