"""Conversion-time and test-time tools: INT8 quantization, the local test server."""
