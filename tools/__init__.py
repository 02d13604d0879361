"""Conversion-time and test-time tools: the converter's parts (checkpoints,
checkpoint_download, random_init, ir_export), INT8 quantization (quantize_int8,
generated_inputs) and the local test server."""
