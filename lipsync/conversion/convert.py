"""Convert Wav2Lip and S3FD PyTorch checkpoints into OpenVINO IR for the CPU service.

Usage::

    python convert_to_openvino.py --wav2lip wav2lip.pth [--wav2lip-gan wav2lip_gan.pth] \\
        --s3fd s3fd.pth --output-dir models
    python convert_to_openvino.py --download --output-dir models        # the authors' files
    python convert_to_openvino.py --random-init 0 --output-dir models   # untrained, for tests

Writes ``wav2lip.xml/.bin``, ``wav2lip_gan.xml/.bin`` (when given), ``face_detection.xml/.bin``
and ``manifest.json`` into the output directory. The IR interface (tensor names, shapes and
value ranges) is described in ir_export.py.

Its parts live beside it in lipsync/conversion/: checkpoints.py (loading and validation),
checkpoint_download.py (--download), random_init.py (--random-init) and ir_export.py.

Exit codes: 0 success, 2 invalid arguments or checkpoint, 3 download failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from lipsync.conversion.checkpoint_download import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_SOURCES,
    URL_ENV_VARS,
    DownloadError,
    download_all,
    page_url,
)
from lipsync.conversion.checkpoints import (
    MODEL_KINDS,
    S3FD_NAME,
    WAV2LIP,
    load_s3fd_state_dict,
    load_wav2lip_state_dict,
)
from lipsync.conversion.ir_export import (
    DETECTOR_INPUTS,
    DETECTOR_OUTPUTS,
    IR_NAMES,
    WAV2LIP_INPUTS,
    WAV2LIP_OUTPUTS,
    convert_s3fd,
    convert_wav2lip,
    stored_precision,
)
from lipsync.conversion.random_init import write_random_checkpoints
from lipsync.util import configure_logging, sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


# --- Conversion -----------------------------------------------------------------------------


def _io_spec(spec: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": shape} for name, shape in spec.items()]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_checkpoints(
    checkpoints: Mapping[str, str | Path],
) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Load and validate every given checkpoint: kind -> (path, state_dict).

    wav2lip and s3fd are required; raises ValueError for missing, unknown or unusable ones.
    """
    missing = [k for k in (WAV2LIP, S3FD_NAME) if checkpoints.get(k) is None]
    if missing:
        raise ValueError(f"missing checkpoint(s): {', '.join(missing)}")
    unknown = set(checkpoints) - set(MODEL_KINDS)
    if unknown:
        raise ValueError(f"unknown model kind(s): {', '.join(sorted(unknown))}")
    loaded: dict[str, tuple[Path, dict[str, torch.Tensor]]] = {}
    for kind in MODEL_KINDS:
        if checkpoints.get(kind) is None:
            continue
        path = Path(checkpoints[kind])
        loader = load_s3fd_state_dict if kind == S3FD_NAME else load_wav2lip_state_dict
        loaded[kind] = (path, loader(path))
    return loaded


def _manifest_entry(
    kind: str, source: Path, xml_path: Path, untrained: bool, random_seed: int | None
) -> dict[str, Any]:
    """The manifest's record of one converted IR."""
    is_detector = kind == S3FD_NAME
    entry: dict[str, Any] = {
        "xml": xml_path.name,
        "bin": xml_path.with_suffix(".bin").name,
        "source": source.name,
        "sha256": sha256_file(source),
        "openvino_version": ov.get_version(),
        "weights_precision": stored_precision(xml_path),
        "inputs": _io_spec(DETECTOR_INPUTS if is_detector else WAV2LIP_INPUTS),
        "outputs": _io_spec(DETECTOR_OUTPUTS if is_detector else WAV2LIP_OUTPUTS),
        "untrained": untrained,
        "created": _now(),
    }
    if untrained:
        entry["random_init_seed"] = random_seed
    return entry


def convert_all(
    checkpoints: Mapping[str, str | Path],
    output_dir: str | Path,
    *,
    fp16_weights: bool = False,
    untrained: bool = False,
    random_seed: int | None = None,
) -> dict[str, Any]:
    """Convert the given checkpoints (kind -> path; kinds wav2lip, wav2lip_gan, s3fd).

    wav2lip and s3fd are required. Writes the IRs and manifest.json into ``output_dir`` and
    returns the manifest. Raises ValueError for unusable checkpoints.
    """
    output_dir = Path(output_dir)
    loaded = load_checkpoints(checkpoints)  # everything validated before anything is written
    if untrained:
        logger.warning(
            "converting UNTRAINED random networks (seed %s): outputs are meaningless, "
            "for tests and benchmarks only",
            random_seed,
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    for kind in set(MODEL_KINDS) - set(loaded):
        stale = output_dir / f"{IR_NAMES[kind]}.xml"
        if stale.exists():
            logger.warning("%s is left from an earlier run and not in the new manifest", stale)
    entries: dict[str, Any] = {}
    for kind, (path, state) in loaded.items():
        xml_path = output_dir / f"{IR_NAMES[kind]}.xml"
        convert = convert_s3fd if kind == S3FD_NAME else convert_wav2lip
        convert(state, xml_path, fp16_weights=fp16_weights)
        entries[IR_NAMES[kind]] = _manifest_entry(kind, path, xml_path, untrained, random_seed)
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "created": _now(),
        "openvino_version": ov.get_version(),
        "torch_version": torch.__version__,
        "untrained": untrained,
        "models": entries,
    }
    _write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    logger.info("wrote %s (%s)", output_dir / MANIFEST_NAME, ", ".join(entries))
    return manifest


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --- Command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert Wav2Lip and S3FD checkpoints to OpenVINO IR.",
        epilog="Exit codes: 0 ok, 2 bad arguments or checkpoint, 3 download failed.",
    )
    src = parser.add_argument_group("checkpoints")
    src.add_argument("--wav2lip", type=Path, help="Wav2Lip checkpoint (.pth)")
    src.add_argument("--wav2lip-gan", type=Path, help="Wav2Lip GAN checkpoint (.pth), optional")
    src.add_argument("--s3fd", type=Path, help="S3FD face detector checkpoint (.pth)")
    src.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="where --download / --random-init write checkpoints (default: "
        "checkpoints/ resp. <output-dir>/untrained-checkpoints/)",
    )
    mode = src.add_mutually_exclusive_group()
    mode.add_argument(
        "--download",
        action="store_true",
        help="download the checkpoints not given as local files (by default the authors' "
        "published files; the Wav2Lip weights are for non-commercial research use only)",
    )
    mode.add_argument(
        "--random-init",
        type=int,
        metavar="SEED",
        help="write and convert seeded UNTRAINED checkpoints (tests only)",
    )
    dl = parser.add_argument_group("download")
    for kind in MODEL_KINDS:
        flag = kind.replace("_", "-")
        dl.add_argument(
            f"--{flag}-url",
            help=f"URL (default: ${URL_ENV_VARS[kind]}, else {page_url(DEFAULT_SOURCES[kind])})",
        )
        dl.add_argument(f"--{flag}-sha256", type=str.lower, help="expected sha256 (hex)")
    dl.add_argument(
        "--download-timeout",
        type=float,
        default=DEFAULT_DOWNLOAD_TIMEOUT,
        help="socket timeout in seconds (default: %(default)s)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-dir",
        type=Path,
        default=Path("models"),
        help="IR and manifest directory (default: %(default)s)",
    )
    out.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store weights as FP16 (compute precision is chosen at load time)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _resolve_checkpoints(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Path]:
    if args.random_init is not None:
        if any(getattr(args, k) is not None for k in MODEL_KINDS):
            parser.error("--random-init cannot be combined with checkpoint paths")
        directory = args.checkpoint_dir or args.output_dir / "untrained-checkpoints"
        logger.warning(
            "writing UNTRAINED random checkpoints (seed %d) to %s", args.random_init, directory
        )
        return write_random_checkpoints(args.random_init, directory)
    if args.download:
        return download_all(args, args.checkpoint_dir or Path("checkpoints"))
    if args.wav2lip is None or args.s3fd is None:
        parser.error("--wav2lip and --s3fd are required (or use --download / --random-init)")
    return {k: getattr(args, k) for k in MODEL_KINDS if getattr(args, k) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        checkpoints = _resolve_checkpoints(args, parser)
        convert_all(
            checkpoints,
            args.output_dir,
            fp16_weights=args.fp16_weights,
            untrained=args.random_init is not None,
            random_seed=args.random_init,
        )
    except DownloadError as exc:
        _print_error(exc)
        return 3
    except ValueError as exc:
        _print_error(exc)
        return 2
    return 0


def _print_error(exc: Exception) -> None:
    """One-line error message on stderr."""
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
