"""Media decoding and encoding: images, face videos, the output video stream."""
