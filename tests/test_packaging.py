"""The package metadata: every module ships, the pins come from the requirement files only."""

from __future__ import annotations

import re
import tomllib

from helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z0-9,-]+\])?==[A-Za-z0-9.+!-]+$")


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def requirement_files() -> dict[str, list[str]]:
    """Extra (None: the dependencies) -> the requirement files pyproject.toml reads."""
    dynamic = SETUPTOOLS["dynamic"]
    files = {None: dynamic["dependencies"]["file"]}
    files.update({extra: v["file"] for extra, v in dynamic["optional-dependencies"].items()})
    return files


# The design card's names, kept in the source tree as thin entry points into lipsync.
ENTRY_POINTS = {"app.py", "inference_engine.py", "audio.py", "convert_to_openvino.py"}
# Used from a checkout only: benchmarks (`python -m bench.<name>`), the test harness (tools/)
# and the design card's face_detection/ entry point.
CHECKOUT_ONLY = {"bench", "tools", "face_detection"}


def test_only_the_lipsync_package_is_installed():
    assert SETUPTOOLS["py-modules"] == []
    assert SETUPTOOLS["packages"]["find"]["include"] == ["lipsync*"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - CHECKOUT_ONLY == {"lipsync"}
    assert {p.name for p in ROOT.glob("*.py")} == ENTRY_POINTS


def test_the_entry_points_only_re_export_lipsync():
    """Each is a few lines that import from lipsync: the code lives in the package."""
    for path in [*(ROOT / name for name in ENTRY_POINTS), ROOT / "face_detection/__init__.py"]:
        text = path.read_text()
        imports = [line for line in text.splitlines() if line.startswith(("from ", "import "))]
        assert any(line.startswith("from lipsync") for line in imports), path
        assert all(
            line.startswith(("from lipsync", "from __future__", "from typing", "import sys"))
            for line in imports
        ), path
        assert len(text.splitlines()) < 40, path


def test_the_entry_points_expose_what_the_design_card_names():
    import app
    import audio
    import convert_to_openvino
    import face_detection
    import inference_engine
    from lipsync import audio as lipsync_audio
    from lipsync.engine import Wav2LipInferenceEngine
    from lipsync.face_detection import S3FDDetector
    from lipsync.server.app import create_app

    assert app.create_app is create_app
    assert inference_engine.Wav2LipInferenceEngine is Wav2LipInferenceEngine
    assert audio.melspectrogram is lipsync_audio.melspectrogram
    assert face_detection.S3FDDetector is S3FDDetector
    assert callable(convert_to_openvino.main)


def test_the_extras_and_their_files():
    files = requirement_files()
    assert files == {
        None: ["requirements.txt"],
        "conversion": ["requirements-conversion.txt"],
        "dev": ["requirements-dev.txt"],
        "ray": ["requirements-ray.txt"],
    }
    assert PYPROJECT["project"]["dynamic"] == ["dependencies", "optional-dependencies"]
    assert "dependencies" not in PYPROJECT["project"]  # no second list of pins


def test_requirement_files_hold_exact_pins_each_once():
    """setuptools reads these files as plain requirement lists: no -r, no options."""
    names: dict[str, str] = {}
    for group in requirement_files().values():
        for file in group:
            for line in requirement_lines(file):
                assert PIN.fullmatch(line), f"{file}: {line!r} is not name==version"
                name = line.split("==")[0].split("[")[0].lower().replace("_", "-")
                assert name not in names, f"{name} pinned in {names.get(name)} and {file}"
                names[name] = file
    assert names["torch"] == "requirements-conversion.txt"
    assert names["openvino"] == names["gunicorn"] == "requirements.txt"
    assert names["mypy"] == names["pytest"] == "requirements-dev.txt"


def test_the_console_script():
    assert PYPROJECT["project"]["scripts"] == {"lipsync": "lipsync.cli:main"}
    from lipsync import cli

    assert callable(cli.main)
