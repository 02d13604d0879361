"""The serving layer: what every way in (HTTP, the /api/stream WebSocket, the CLI, the
Python API, Ray Serve) shares, so each transport only parses its input and writes its
output.

- `options`: RenderOptions from request fields and the Settings' defaults.
- `engine`: the engine (and the avatar store in front of it) built from Settings.
- `faces`: the face of a request (a registered avatar, or inline image/video bytes) and
  the options it implies; the rule that a request names one face.
- `payloads`: base64 media decoded one way.
- `producing`: the frames and chunks (whole file, chunked stream) and their metadata.
"""
