"""A replica's engine runs OpenVINO on the CPUs Ray gave it: LIPSYNC_INFERENCE_THREADS
reaches the CPU plugin (0 keeps OpenVINO's default), and a replica's setting comes from its
`num_cpus`."""

from __future__ import annotations

import pytest

from lipsync.server.ray_serve import replica_threads
from lipsync.server.service import Service
from lipsync.settings import Settings


def cpu_threads(settings: Settings) -> int:
    engine = Service(settings).engine  # no model is compiled: the core is configured
    return int(engine.core.get_property("CPU", "INFERENCE_NUM_THREADS"))


def test_the_thread_setting_reaches_openvino(tmp_path):
    base = {"models_dir": tmp_path, "cache_dir": None, "avatar_dir": None}
    assert cpu_threads(Settings.load({**base, "inference_threads": 1})) == 1
    assert cpu_threads(Settings.load({**base, "inference_threads": replica_threads(2.0)})) == 2
    assert cpu_threads(Settings.load(base)) == 0  # OpenVINO's default: every core


def test_the_thread_setting_is_validated():
    assert Settings.load(environ={"LIPSYNC_INFERENCE_THREADS": "3"}).inference_threads == 3
    with pytest.raises(ValueError, match="LIPSYNC_INFERENCE_THREADS must be >= 0"):
        Settings.load(environ={"LIPSYNC_INFERENCE_THREADS": "-1"})
