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


# Packages used from a checkout only: benchmarks run as `python -m bench.<name>`.
CHECKOUT_ONLY = {"bench"}


def test_every_top_level_module_and_package_is_installed():
    modules = {p.stem for p in ROOT.glob("*.py")}
    assert set(SETUPTOOLS["py-modules"]) == modules
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - CHECKOUT_ONLY
    included = {pattern.rstrip("*") for pattern in SETUPTOOLS["packages"]["find"]["include"]}
    assert packages == included == {"lipsync", "face_detection", "networks", "tools"}


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
