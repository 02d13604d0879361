"""The design card's face detection package: S3FD and the box rules live in
`lipsync.face_detection`."""

from lipsync.face_detection import *  # noqa: F403
