"""The `lipsync` command.

    lipsync serve [--host H] [--port P] [--workers N]   # the HTTP API under gunicorn
    lipsync convert [converter flags]                    # = python convert_to_openvino.py ...
    lipsync generate FACE AUDIO -o OUT [options]         # one video from two files

Settings come from the LIPSYNC_* environment (lipsync.settings), flags override them. A user
error (missing file, undecodable media, no face, bad option) is one line on stderr and exit
status 2; a broken installation (models missing, output not writable) exits with 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO, cast

from lipsync.errors import InvalidInputError
from lipsync.options import GENERATOR_NAMES, FaceBox, RenderOptions
from lipsync.serving.options import LIBRARY_DEFAULTS, render_options
from lipsync.settings import FORMATS, Settings
from lipsync.util import configure_logging, write_atomically

if TYPE_CHECKING:
    from lipsync.media.encode_options import ContainerName

PROG = "lipsync"
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
GUNICORN_ARGS = ("-c", "python:lipsync.server.gunicorn_conf", "lipsync.server.wsgi:app")
SERVE_FLAGS = {"host": "HOST", "port": "PORT", "workers": "LIPSYNC_WORKERS"}
CONVERT_HELP = "convert checkpoints to OpenVINO IR (the flags of convert_to_openvino.py)"
PRECISIONS = ("auto", "f32", "bf16", "int8")


class UserError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # every flag belongs to the converter's own parser
        return convert(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except UserError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Lip-sync a face to speech (Wav2Lip on OpenVINO).")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)
    serve_parser = commands.add_parser("serve", help="run the HTTP API under gunicorn")
    serve_parser.add_argument("--host", help="listen address (HOST, default 0.0.0.0)")
    serve_parser.add_argument("--port", type=int, help="listen port (PORT, default 5001)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (LIPSYNC_WORKERS)")
    serve_parser.set_defaults(command=serve)
    commands.add_parser("convert", help=CONVERT_HELP, add_help=False)
    gen = commands.add_parser("generate", help="lip-sync FACE (image or video) to AUDIO")
    gen.add_argument("face", type=Path, help="face image or video file")
    gen.add_argument("audio", type=Path, help="speech audio file (WAV, MP3, ...)")
    gen.add_argument("-o", "--output", type=Path, required=True, help="video to write")
    gen.add_argument(
        "--fps", type=float, default=LIBRARY_DEFAULTS.fps, help="frame rate for an image face"
    )
    gen.add_argument("--format", choices=FORMATS, help="container (default: OUT's extension)")
    gen.add_argument("--model", choices=GENERATOR_NAMES, default=LIBRARY_DEFAULTS.model)
    gen.add_argument("--box", type=parse_box, help="face box T,B,L,R in pixels (no detection)")
    gen.add_argument(
        "--pads", type=int, nargs=4, default=LIBRARY_DEFAULTS.pads, metavar=("T", "B", "L", "R")
    )
    gen.add_argument("--precision", choices=PRECISIONS, help="LIPSYNC_PRECISION, default auto")
    gen.add_argument("--models-dir", type=Path, help="converted models (LIPSYNC_MODELS_DIR)")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(command=generate)
    return parser


def parse_box(text: str) -> FaceBox:
    """Parse "T,B,L,R" into (top, bottom, left, right)."""
    parts = text.split(",")
    try:
        top, bottom, left, right = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,L,R (4 integers), got {text!r}") from None
    return top, bottom, left, right


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _settings(overrides: dict) -> Settings:
    try:
        return Settings.load({k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise UserError(str(exc)) from None


# -- serve and convert ---------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn (scripts/serve.sh's command); flags become env."""
    for name, variable in SERVE_FLAGS.items():
        if getattr(args, name) is not None:
            os.environ[variable] = str(getattr(args, name))
    _settings({})  # an invalid variable is reported here, in one line
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", *GUNICORN_ARGS])


def convert(argv: list[str]) -> int:
    """lipsync.conversion.convert.main: needs the conversion extra (torch)."""
    try:
        # By name, at call time: the serving image has no torch.
        converter = importlib.import_module("lipsync.conversion.convert")
    except ModuleNotFoundError as exc:
        return _fail(
            f"lipsync convert needs {exc.name} (install the conversion extra: "
            "pip install -e '.[conversion]')",
            EXIT_FAILURE,
        )
    return converter.main(argv)


# -- generate ------------------------------------------------------------------------------


def generate(args: argparse.Namespace) -> int:
    settings = _settings({"models_dir": args.models_dir, "precision": args.precision})
    configure_logging(level=settings.log_level)
    container = output_container(args.output, args.format)
    for label, path in (("face", args.face), ("audio", args.audio)):
        if not path.is_file():
            raise UserError(f"{label} file not found: {path}")
    if not args.output.parent.is_dir():
        raise UserError(f"output directory not found: {args.output.parent}")
    try:
        options = render_options(
            settings, fps=args.fps, pads=args.pads, box=args.box, model=args.model
        )
        data = render(args.face, args.audio, options, container, settings, args.quiet)
    except InvalidInputError as exc:  # media, audio, face and option errors
        raise UserError(getattr(exc, "message", str(exc))) from None
    except FileNotFoundError as exc:  # a model not installed
        return _fail(f"{exc} (convert the models: lipsync convert --help)", EXIT_FAILURE)
    except OSError as exc:  # an input that exists but cannot be read
        return _fail(
            f"cannot read {exc.filename or 'an input'}: {exc.strerror or exc}", EXIT_FAILURE
        )
    try:
        write_atomically(args.output, data)
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror or exc}", EXIT_FAILURE)
    return 0


def output_container(output: Path, fmt: str | None) -> ContainerName:
    """The container: --format, else OUT's extension; the two must agree."""
    by_suffix = output.suffix.lower().lstrip(".")
    if fmt is None and by_suffix not in FORMATS:
        raise UserError(f"cannot tell the format of {output.name!r}: end it in .webm or .mp4")
    if fmt is not None and by_suffix in FORMATS and by_suffix != fmt:
        raise UserError(f"--format {fmt} does not match the output file name {output.name!r}")
    return cast("ContainerName", fmt or by_suffix)


def render(
    face: Path,
    audio_path: Path,
    options: RenderOptions,
    container: ContainerName,
    settings: Settings,
    quiet: bool,
) -> bytes:
    """Decode both files, detect the face, lip-sync and encode. -> the video file's bytes."""
    from lipsync import generation
    from lipsync.serving.engine import build_engine, build_store
    from lipsync.serving.faces import resolve_face
    from lipsync.serving.producing import produce

    speech = generation.decode_speech(audio_path.read_bytes(), settings)
    engine = build_engine(settings)
    store = build_store(settings, lambda: engine, registered=False)
    try:
        resolved = resolve_face(store, options, face=face.read_bytes())
    except InvalidInputError as exc:
        raise UserError(f"face file {face}: {getattr(exc, 'message', exc)}") from None
    progress = None if quiet else Progress(sys.stderr)
    result = produce(generation.generate, engine, resolved, speech, container, on_frames=progress)
    return result.video.data


class Progress:
    """`on_frames` callback drawing "[####......] 120/275 frames  31.2 fps  ETA 0:05".

    The rate counts from the first report (model compilation and face detection come
    before it). On a terminal the line is redrawn in place at most every `interval` s;
    elsewhere (logs, pipes) a line is written every `interval` * 20 s. The last frame is
    always shown.
    """

    WIDTH = 24

    def __init__(
        self,
        stream: TextIO,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.first: tuple[float, int] | None = None  # (time, frames) of the first report
        self.tty = stream.isatty()
        self.interval = interval if self.tty else interval * 20
        self.last_drawn = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done < total and now - self.last_drawn < self.interval:
            return
        self.last_drawn = now
        if self.first is None:
            self.first = (now, done)
        elapsed, frames = now - self.first[0], done - self.first[1]
        filled = self.WIDTH * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} frames"
        if elapsed > 0 and frames > 0:
            rate = frames / elapsed
            eta = round((total - done) / rate)
            line += f"  {rate:.1f} fps  ETA {eta // 60}:{eta % 60:02d}"
        end = "\n" if done >= total or not self.tty else ""
        self.stream.write(("\r" + line + "\x1b[K" if self.tty else line) + end)
        self.stream.flush()


if __name__ == "__main__":
    sys.exit(main())
