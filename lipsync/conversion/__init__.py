"""Conversion time (torch): the converter (`convert`: checkpoints -> OpenVINO IR and
manifest.json) and its parts (checkpoints, checkpoint_download, random_init, ir_export), INT8
quantization (quantize_int8, generated_inputs). The serving path never imports this package."""
