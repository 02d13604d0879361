"""Settings: the one reader of the environment (LIPSYNC_*, HOST, PORT), validated in one place."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from lipsync import settings as config
from lipsync.settings import Settings


def load(overrides=None, **environ: str) -> Settings:
    return Settings.load(overrides, environ=environ)


def test_no_environment_gives_the_defaults():
    assert load() == Settings()
    assert Settings().bind == "0.0.0.0:5001"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_booleans(raw):
    assert load(LIPSYNC_FILL_MISSING_FACES=raw).fill_missing_faces is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off"])
def test_false_booleans(raw):
    assert load(LIPSYNC_COMPILE_ON_START=raw).compile_on_start is False


def test_a_bad_boolean_names_the_variable():
    with pytest.raises(ValueError, match=r"^LIPSYNC_COMPILE_ON_START must be a boolean, got 'y'"):
        load(LIPSYNC_COMPILE_ON_START="y")


def test_numbers():
    s = load(LIPSYNC_BATCH_SIZE="8", LIPSYNC_MAX_BODY_MB="12.5", LIPSYNC_MAX_QUEUE_WAIT_S="0")
    assert (s.batch_size, s.max_body_mb, s.max_queue_wait_s) == (8, 12.5, 0.0)
    assert isinstance(s.batch_size, int) and isinstance(s.max_body_mb, float)


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("LIPSYNC_BATCH_SIZE", "8.5", "LIPSYNC_BATCH_SIZE must be an integer, got '8.5'"),
        ("LIPSYNC_WORKERS", "two", "LIPSYNC_WORKERS must be an integer, got 'two'"),
        ("LIPSYNC_MAX_BODY_MB", "big", "LIPSYNC_MAX_BODY_MB must be a number, got 'big'"),
        ("LIPSYNC_BATCH_SIZE", "0", "LIPSYNC_BATCH_SIZE must be >= 1, got 0"),
        ("LIPSYNC_THREADS", "-1", "LIPSYNC_THREADS must be >= 1, got -1"),
        ("LIPSYNC_MAX_AUDIO_SECONDS", "0", "LIPSYNC_MAX_AUDIO_SECONDS must be > 0, got 0.0"),
        ("LIPSYNC_KEEPALIVE_S", "-5", "LIPSYNC_KEEPALIVE_S must be >= 0, got -5"),
        ("LIPSYNC_GRACEFUL_TIMEOUT", "-1", "LIPSYNC_GRACEFUL_TIMEOUT must be >= 0, got -1"),
        ("PORT", "70000", "PORT must be between 1 and 65535, got 70000"),
        ("PORT", "http", "PORT must be an integer, got 'http'"),
        ("LIPSYNC_DEFAULT_FORMAT", "avi", "LIPSYNC_DEFAULT_FORMAT must be one of"),
        ("LIPSYNC_LOG_LEVEL", "loud", "LIPSYNC_LOG_LEVEL must be one of"),
    ],
)
def test_invalid_values_name_the_variable(variable, raw, message):
    with pytest.raises(ValueError) as error:
        load(**{variable: raw})
    assert str(error.value).startswith(message)


def test_invalid_overrides_name_the_field():
    with pytest.raises(ValueError, match=r"^workers must be >= 1, got 0$"):
        load({"workers": 0})
    with pytest.raises(ValueError, match="unknown settings: colour"):
        load({"colour": "red"})
    with pytest.raises(ValueError, match="sample rate range is empty"):
        load(LIPSYNC_MIN_AUDIO_SAMPLE_RATE="48000", LIPSYNC_MAX_AUDIO_SAMPLE_RATE="8000")


def test_paths_and_none():
    s = load(LIPSYNC_MODELS_DIR="/srv/models", LIPSYNC_METRICS_DIR="rel/metrics")
    assert s.models_dir == Path("/srv/models") and s.metrics_dir == Path("rel/metrics")
    for raw in ("none", "None", "off", "OFF"):
        s = load(LIPSYNC_CACHE_DIR=raw, LIPSYNC_AVATAR_DIR=raw)
        assert (s.cache_dir, s.avatar_dir) == (None, None)
    # Only the optional directories can be switched off.
    assert load(LIPSYNC_MODELS_DIR="none").models_dir == Path("none")
    assert load({"avatar_dir": "/tmp/a", "cache_dir": None}).avatar_dir == Path("/tmp/a")


def test_strings_are_stripped_and_the_log_level_lowered():
    s = load(LIPSYNC_LOG_LEVEL=" WARNING ", LIPSYNC_DEVICE=" GPU ", LIPSYNC_API_KEY="s3cret ")
    assert (s.log_level, s.device, s.api_key) == ("warning", "GPU", "s3cret")
    assert "s3cret" not in repr(s)  # the API key is never printed


def test_host_and_port_are_unprefixed():
    s = load(HOST="127.0.0.1", PORT="8080", LIPSYNC_PORT="9999", LIPSYNC_HOST="10.0.0.1")
    assert s.bind == "127.0.0.1:8080"


def test_overrides_order_defaults_then_environment_then_code():
    assert load().batch_size == 16
    assert load(LIPSYNC_BATCH_SIZE="8").batch_size == 8
    assert load({"batch_size": 4}, LIPSYNC_BATCH_SIZE="8").batch_size == 4
    # An empty variable counts as unset, and unrelated variables are ignored.
    assert load(LIPSYNC_BATCH_SIZE=" ", BATCH_SIZE="2").batch_size == 16
    # A field the code overrides still has its variable checked.
    with pytest.raises(ValueError, match="LIPSYNC_BATCH_SIZE"):
        load({"batch_size": 4}, LIPSYNC_BATCH_SIZE="x")


def test_the_process_environment_is_the_default_source(monkeypatch):
    monkeypatch.setenv("LIPSYNC_MAX_QUEUE", "7")
    assert Settings.load().max_queue == 7


def test_every_field_has_a_distinct_variable():
    names = [config.env_name(f) for f in dataclasses.fields(Settings)]
    assert len(names) == len(set(names))
    assert {"HOST", "PORT", "LIPSYNC_WORKERS", "LIPSYNC_LOG_LEVEL"} <= set(names)


def test_gunicorn_config_comes_from_settings(monkeypatch, tmp_path):
    environ = {
        "HOST": "127.0.0.2",
        "PORT": "6001",
        "LIPSYNC_WORKERS": "3",
        "LIPSYNC_THREADS": "5",
        "LIPSYNC_WORKER_TIMEOUT": "90",
        "LIPSYNC_GRACEFUL_TIMEOUT": "20",
        "LIPSYNC_KEEPALIVE_S": "15",
        "LIPSYNC_LOG_LEVEL": "warning",
        "LIPSYNC_METRICS_DIR": str(tmp_path),
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    from lipsync.server import gunicorn_conf

    conf = importlib.reload(gunicorn_conf)
    assert (conf.bind, conf.workers, conf.threads) == ("127.0.0.2:6001", 3, 5)
    assert (conf.timeout, conf.graceful_timeout, conf.keepalive) == (90, 20, 15)
    assert conf.loglevel == "warning"
    assert conf.METRICS_DIR.parent == tmp_path
    monkeypatch.setenv("LIPSYNC_WORKERS", "lots")
    with pytest.raises(ValueError, match="LIPSYNC_WORKERS must be an integer"):
        importlib.reload(gunicorn_conf)
    monkeypatch.undo()
    importlib.reload(gunicorn_conf)


def service_variable_reads(path: Path) -> list[str]:
    """Service variables a module reads by name: `<x>.get("LIPSYNC_...")`, `<x>["PORT"]`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            key = node.args[0] if node.func.attr in ("get", "getenv") else None
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
        name = key.value if isinstance(key, ast.Constant) else None
        if isinstance(name, str) and (
            name.startswith(config.ENV_PREFIX) or name in ("HOST", "PORT")
        ):
            found.append(name)
    return found


def test_no_module_but_settings_reads_the_service_environment():
    root = Path(config.__file__).resolve().parents[1]
    readers = {
        str(path.relative_to(root)): service_variable_reads(path)
        for path in root.glob("lipsync/**/*.py")
        if path.name != "settings.py"
    }
    assert {path: names for path, names in readers.items() if names} == {}
    assert service_variable_reads(root / "lipsync/settings.py") == []  # through env_name only
