"""The OpenVINO runtime: the core, compile-once networks, and the compiled Wav2Lip generator."""
