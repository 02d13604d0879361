"""The design card's engine module: `Wav2LipInferenceEngine` lives in `lipsync.engine`."""

from lipsync.engine import DETECTOR_NAME, ModelNotFoundError, Wav2LipInferenceEngine

__all__ = ["DETECTOR_NAME", "ModelNotFoundError", "Wav2LipInferenceEngine"]
