"""Compile-once networks: processes sharing an OpenVINO model cache compile one at a time."""

from __future__ import annotations

import fcntl
import threading

from lipsync.runtime.core import CompiledNetwork, make_core


def test_a_compile_waits_while_another_process_holds_the_cache(untrained_models, tmp_path):
    cache = tmp_path / "cache"
    network = CompiledNetwork(
        make_core(cache), untrained_models / "face_detection.xml", device="CPU", precision="f32"
    )
    with open(cache / ".compile.lock", "a") as other:  # another open file: like another process
        fcntl.flock(other, fcntl.LOCK_EX)
        compiling = threading.Thread(target=network.compile)
        compiling.start()
        compiling.join(1.0)
        assert compiling.is_alive() and not network.compiled
        fcntl.flock(other, fcntl.LOCK_UN)
    compiling.join(60)
    assert network.compiled and any(cache.glob("*.blob"))
