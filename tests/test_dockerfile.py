"""Invariants of the Dockerfile, checked without a Docker engine.

A small parser reads the Dockerfile into stages and instructions. The checks: the two stages
and their bases, torch only in the convert stage, a non-root runtime user, every COPY source
present in the build context and not excluded by .dockerignore, the runtime COPYs covering
the modules wsgi.py imports, every default write location moved to a writable cache dir,
the HEALTHCHECK command run for real, and the convert step's checkpoint choice run with sh
and a stand-in `python`.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ROOT

from lipsync import settings as config

DOCKERFILE = ROOT / "Dockerfile"
# Where the runtime stage puts the serving code to install it as a package.
PACKAGE_SOURCE = "/tmp/src"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_IMAGE = "python:3.11-slim-bookworm"
HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_]\w*)\2")


@dataclass
class Instruction:
    keyword: str
    args: str
    heredoc: str | None = None

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def flags_and_paths(self) -> tuple[dict[str, str], list[str]]:
        """COPY/ADD: (--flag=value options, [sources..., destination])."""
        flags, paths = {}, []
        for word in self.words():
            if word.startswith("--") and not paths:
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                paths.append(word)
        return flags, paths


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def run_text(self) -> str:
        return "\n".join(i.args + "\n" + (i.heredoc or "") for i in self.all("RUN"))

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for word in inst.words():
                name, _, value = word.partition("=")
                values[name] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuations joined, heredocs attached."""
    lines = text.splitlines()
    stages: list[Stage] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            following = lines[i]
            i += 1
            if following.lstrip().startswith("#"):
                continue  # Docker drops comment lines inside a continuation
            line = line[:-1] + " " + following.strip()
        keyword, _, args = line.strip().partition(" ")
        inst = Instruction(keyword.upper(), args.strip())
        match = HEREDOC.search(inst.args) if inst.keyword in ("RUN", "COPY", "ADD") else None
        if match:
            body = []
            while lines[i].strip() != match.group(3):
                body.append(lines[i])
                i += 1
            i += 1
            inst.heredoc = "\n".join(body) + "\n"
        if inst.keyword == "FROM":
            words = inst.words()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{inst.keyword} before the first FROM"
            stages[-1].instructions.append(inst)
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile(DOCKERFILE.read_text())}


@pytest.fixture(scope="module")
def runtime(stages) -> Stage:
    return stages["runtime"]


@pytest.fixture(scope="module")
def convert(stages) -> Stage:
    return stages["convert"]


def test_two_stages_on_slim_python_runtime_last():
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    assert [(s.name, s.base) for s in parsed] == [
        ("convert", BASE_IMAGE),
        ("runtime", BASE_IMAGE),
    ]


def test_convert_stage_installs_conversion_requirements_with_the_cpu_torch_index(convert):
    args = {i.words()[0].split("=")[0]: i.args for i in convert.all("ARG")}
    assert args["TORCH_INDEX_URL"] == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    pip = [i.args for i in convert.all("RUN") if "pip install" in i.args]
    assert len(pip) == 1
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in pip[0]
    assert "-r requirements.txt -r requirements-conversion.txt" in pip[0]
    assert "--no-cache-dir" in pip[0] and "requirements-dev" not in pip[0]
    assert "torch==" in (ROOT / "requirements-conversion.txt").read_text()


def test_runtime_installs_requirements_txt_then_the_package_without_extras(runtime):
    pip = [i.args for i in runtime.all("RUN") if "pip install" in i.args]
    assert pip == [
        "pip install --no-cache-dir -r requirements.txt",
        f"rm -rf {PACKAGE_SOURCE}/lipsync/conversion {PACKAGE_SOURCE}/lipsync/networks  "
        f"&& pip install --no-cache-dir {PACKAGE_SOURCE} && rm -rf {PACKAGE_SOURCE}",
    ]
    everything = runtime.run_text() + " ".join(i.args for i in runtime.instructions)
    assert "torch" not in everything.lower() and "[" not in pip[1]
    assert "requirements-dev" not in everything and "requirements-conversion" not in everything
    # The package's own dependencies are requirements.txt, so its install adds nothing.
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    copied_to_source = {
        source
        for inst in runtime.all("COPY")
        for source in inst.flags_and_paths()[1][:-1]
        if inst.flags_and_paths()[1][-1].startswith(PACKAGE_SOURCE)
    }
    assert {"pyproject.toml", "requirements.txt"} <= copied_to_source
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not [r for r in requirements if r.startswith("-")], "requirements.txt includes others"
    names = {re.split(r"[=<>!~\[; ]", r)[0].lower() for r in requirements}
    assert "openvino" in names and not names & {"torch", "torchvision", "torchaudio"}
    # From the convert stage, only the converted models.
    from_convert = [
        i.flags_and_paths() for i in runtime.all("COPY") if "from" in i.flags_and_paths()[0]
    ]
    assert [(f["from"], p) for f, p in from_convert] == [
        ("convert", ["/build/models/", "./models/"])
    ]


def test_runtime_user_is_not_root(runtime):
    users = runtime.all("USER")
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert "useradd --uid 10001" in runtime.run_text()
    assert user in ("10001", "lipsync")


def test_runtime_defaults(runtime):
    env = runtime.env()
    assert env["PORT"] == "5001"
    assert env["LIPSYNC_MODELS_DIR"] == "/app/models"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert [i.args for i in runtime.all("EXPOSE")] == ["5001"]
    assert [i.args for i in runtime.all("STOPSIGNAL")] == ["SIGTERM"]
    assert [i.args for i in runtime.all("CMD")] == [
        '["gunicorn", "-c", "python:lipsync.server.gunicorn_conf", "lipsync.server.wsgi:app"]'
    ]
    assert [i.args for i in runtime.all("WORKDIR")] == ["/app"]


def test_every_default_write_location_is_a_writable_cache_dir(runtime):
    """Settings whose default lies in the (read-only, root-owned) project dir are moved by
    ENV to a directory the runtime stage creates and gives to the service user."""
    env = runtime.env()
    run = runtime.run_text()
    assert "chown -R lipsync:lipsync /var/cache/lipsync" in run
    writable = [
        f.name
        for f in dataclasses.fields(config.Settings)
        if isinstance(f.default, Path) and f.default.is_relative_to(config.PROJECT_DIR / ".cache")
    ]
    assert {"cache_dir", "avatar_dir"} <= set(writable)
    for name in writable:
        value = env.get(f"LIPSYNC_{name.upper()}")
        assert value, f"LIPSYNC_{name.upper()} must point into /var/cache/lipsync"
        assert value.startswith("/var/cache/lipsync/")
        assert value in run.split(), f"{value} is not created in the runtime stage"


# -- COPY sources and the build context --------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore excludes `path` (or a parent directory); no negations in use."""
    parts = Path(path).parts
    for pattern in ignore_patterns():
        assert not pattern.startswith("!"), "extend ignored() for negated patterns"
        pattern = pattern.removeprefix("**/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(
                parts[depth - 1], pattern
            ):
                return True
    return False


def context_copies(stage: Stage) -> list[str]:
    return [
        source
        for inst in stage.all("COPY")
        if "from" not in inst.flags_and_paths()[0]
        for source in inst.flags_and_paths()[1][:-1]
    ]


def test_dockerignore_keeps_secrets_and_bulk_out_and_checkpoints_in():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".cache/x",
        "models/wav2lip.bin",
        "a/__pycache__/b.pyc",
    ):
        assert ignored(path), path
    assert not ignored("checkpoints/wav2lip.pth")


@pytest.mark.parametrize("stage_name", ["convert", "runtime"])
def test_every_copy_source_exists_in_the_context(stages, stage_name):
    for source in context_copies(stages[stage_name]):
        pattern = source.rstrip("/")
        matches = [p for p in ROOT.glob(pattern) if not ignored(str(p.relative_to(ROOT)))]
        if source.rstrip("/") == "checkpoint[s]":
            # Optional: BuildKit copies nothing for an unmatched wildcard.
            assert glob_chars(source)
            continue
        assert matches, f"COPY {source}: nothing in the build context"


def glob_chars(text: str) -> bool:
    return any(c in text for c in "*?[")


def test_optional_checkpoints_are_copied_through_a_wildcard(convert):
    assert "checkpoint[s]" in context_copies(convert)


def local_imports(module: Path) -> set[str]:
    """Dotted names a module imports (absolute imports only; the project has no others):
    `from a.b import c` gives a.b and a.b.c (c may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_files(dotted: str) -> list[Path]:
    """The files importing `dotted` loads from the project: each package's __init__.py on
    the way, then the module (none for a third-party name or a plain attribute)."""
    parts = dotted.split(".")
    files = []
    for depth in range(1, len(parts) + 1):
        base = ROOT.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
        else:
            break
    return files


def reachable_modules(*entry_points: str) -> tuple[set[Path], set[str]]:
    """Project files reachable by imports from `entry_points` (paths under ROOT), and every
    top-level name they import."""
    todo = [ROOT / entry for entry in entry_points]
    files: set[Path] = set()
    imported: set[str] = set()
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        for name in local_imports(path):
            imported.add(name.split(".")[0])
            todo.extend(project_files(name))
    return files, imported


def copied_python_files(stage: Stage) -> set[Path]:
    copied: set[Path] = set()
    for source in context_copies(stage):
        for path in ROOT.glob(source.rstrip("/")):
            copied.update(path.rglob("*.py") if path.is_dir() else [path])
    return {path for path in copied if path.suffix == ".py"}


def test_runtime_copies_the_whole_service_and_no_torch_code(runtime):
    copied = copied_python_files(runtime)
    files, imported = reachable_modules(
        "lipsync/server/wsgi.py", "lipsync/server/gunicorn_conf.py", "lipsync/cli.py"
    )
    missing = sorted(str(p.relative_to(ROOT)) for p in files - copied)
    assert not missing, f"the runtime stage does not copy {missing}"
    assert "torch" not in imported
    for directory in ("tests", "bench", "tools", "face_detection"):
        assert not any(p.is_relative_to(ROOT / directory) for p in copied), directory
    assert not {p.name for p in copied if p.parent == ROOT}  # no source-tree entry point
    torch_only = [ROOT / "lipsync/conversion", ROOT / "lipsync/networks"]
    assert not any(p.is_relative_to(d) for p in files for d in torch_only)


def test_convert_stage_copies_what_the_converter_imports(convert):
    files, imported = reachable_modules("convert_to_openvino.py")
    missing = sorted(str(p.relative_to(ROOT)) for p in files - copied_python_files(convert))
    assert not missing, f"the convert stage does not copy {missing}"
    assert {"torch", "lipsync"} <= imported
    assert ROOT / "lipsync/networks/wav2lip.py" in files


# -- HEALTHCHECK -------------------------------------------------------------------------------


def healthcheck(runtime: Stage) -> tuple[str, str]:
    (inst,) = runtime.all("HEALTHCHECK")
    options, sep, command = inst.args.partition(" CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    return options, command


def run_healthcheck(command: str, port: int) -> int:
    env = {**os.environ, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, timeout=30
    ).returncode


class StubHealth(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_options(runtime):
    options, command = healthcheck(runtime)
    assert options.split() == [
        "--interval=30s",
        "--timeout=5s",
        "--start-period=60s",
        "--retries=3",
    ]
    assert command.startswith("python -c ")
    assert "/health" in command and "curl" not in command


@pytest.mark.slow
def test_healthcheck_passes_on_the_live_server(runtime, live_server):
    _, command = healthcheck(runtime)
    port = int(live_server.url.rsplit(":", 1)[1])
    assert run_healthcheck(command, port) == 0


def test_healthcheck_fails_on_503_and_on_no_server(runtime):
    _, command = healthcheck(runtime)
    server = http.server.HTTPServer(("127.0.0.1", 0), StubHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert run_healthcheck(command, server.server_address[1]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck(command, server.server_address[1]) == 1  # closed port


# -- the convert step's choice of checkpoints ---------------------------------------------------

CONVERT_ARGS = {
    "UNTRAINED": "0",
    "UNTRAINED_SEED": "0",
    "WAV2LIP_URL": "",
    "WAV2LIP_GAN_URL": "",
    "S3FD_URL": "",
    "WAV2LIP_SHA256": "",
    "WAV2LIP_GAN_SHA256": "",
    "S3FD_SHA256": "",
}


def test_convert_build_args_are_declared(convert):
    declared = {i.words()[0].split("=")[0] for i in convert.all("ARG")}
    assert set(CONVERT_ARGS) <= declared


def run_convert_step(convert: Stage, tmp_path: Path, files=(), **build_args: str):
    """The convert RUN heredoc under sh in a fake /build, with `python` replaced by a stub
    that records its arguments. Returns (exit code, stderr, converter args or None)."""
    (script,) = [i.heredoc for i in convert.all("RUN") if i.heredoc]
    script = script.replace("/tmp/", f"{tmp_path}/tmp/")  # keep rm -rf inside tmp_path
    work = tmp_path / "build"
    for name in files:
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)
        (work / "checkpoints" / name).write_bytes(b"")
    work.mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "python-args"
    (bin_dir / "python").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{log}'\n")
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **CONVERT_ARGS, **build_args}
    result = subprocess.run(
        ["sh", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=30
    )
    args = log.read_text().splitlines() if log.exists() else None
    return result.returncode, result.stderr, args


OUTPUT = ["--output-dir", "/build/models"]


def test_convert_step_downloads_the_authors_files_by_default(convert, tmp_path):
    """No checkpoint in the context and no build arg: the converter's default download."""
    code, stderr, args = run_convert_step(convert, tmp_path)
    assert code == 0, stderr
    assert args == [
        "convert_to_openvino.py",
        "--download",
        *("--checkpoint-dir", f"{tmp_path}/tmp/downloaded-checkpoints"),
        *OUTPUT,
    ]


def test_convert_step_does_not_fetch_the_optional_gan_beside_local_files(convert, tmp_path):
    code, stderr, args = run_convert_step(convert, tmp_path, files=["wav2lip.pth", "s3fd.pth"])
    assert code == 0, stderr
    assert "--download" not in args


def test_convert_step_untrained(convert, tmp_path):
    code, stderr, args = run_convert_step(convert, tmp_path, UNTRAINED="1", UNTRAINED_SEED="7")
    assert code == 0, stderr
    assert "meaningless" in stderr
    assert args == [
        "convert_to_openvino.py",
        *("--random-init", "7"),
        *("--checkpoint-dir", f"{tmp_path}/tmp/untrained-checkpoints"),
        *OUTPUT,
    ]


def test_convert_step_local_checkpoints(convert, tmp_path):
    code, stderr, args = run_convert_step(
        convert, tmp_path, files=["wav2lip.pth", "s3fd.pth", "wav2lip_gan.pth"]
    )
    assert code == 0, stderr
    assert args == [
        "convert_to_openvino.py",
        *("--wav2lip", "checkpoints/wav2lip.pth"),
        *("--wav2lip-gan", "checkpoints/wav2lip_gan.pth"),
        *("--s3fd", "checkpoints/s3fd.pth"),
        *OUTPUT,
    ]


def test_convert_step_downloads_what_is_missing(convert, tmp_path):
    code, stderr, args = run_convert_step(
        convert,
        tmp_path,
        files=["wav2lip.pth"],
        WAV2LIP_GAN_URL="https://example.invalid/gan.pth",
        S3FD_SHA256="ab" * 32,
    )
    assert code == 0, stderr
    assert args == [
        "convert_to_openvino.py",
        *("--wav2lip", "checkpoints/wav2lip.pth"),
        "--download",
        *("--checkpoint-dir", f"{tmp_path}/tmp/downloaded-checkpoints"),
        *("--s3fd-sha256", "ab" * 32),
        *OUTPUT,
    ]


def test_convert_step_download_only(convert, tmp_path):
    code, stderr, args = run_convert_step(
        convert, tmp_path, WAV2LIP_URL="https://example.invalid/w.pth", WAV2LIP_SHA256="cd" * 32
    )
    assert code == 0, stderr
    assert args[:2] == ["convert_to_openvino.py", "--download"]
    assert args[-4:] == ["--wav2lip-sha256", "cd" * 32, *OUTPUT]
