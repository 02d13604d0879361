"""S3FD face detection on OpenVINO and the reference's box rules."""

from lipsync.errors import ErrorCode, InvalidInputError
from lipsync.face_detection.boxes import pad_box, smooth_boxes, validate_box
from lipsync.face_detection.s3fd import S3FDDetector


class FaceNotDetectedError(InvalidInputError):
    """No face scored above the detector threshold (code face_not_detected)."""

    default_code = ErrorCode.FACE_NOT_DETECTED

    def __init__(self, message: str, frame_index: int | None = None) -> None:
        super().__init__(message)
        self.frame_index = frame_index


__all__ = ["FaceNotDetectedError", "S3FDDetector", "pad_box", "smooth_boxes", "validate_box"]
