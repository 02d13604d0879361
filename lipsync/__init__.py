"""The lip-sync service as a library: settings, options, domain errors, generation, avatars,
the Python API, and its HTTP server, media and OpenVINO runtime subpackages."""
