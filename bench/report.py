"""The benchmark report: medians of the children's runs, the torch comparison's ratios, the
printed tables and the JSON file.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.precision import HINT_BATCH
from bench.torch_baseline import TORCH_BATCH

# What the torch child reports about itself, copied into each comparison round.
TORCH_FACTS = ("frames", "torch_version", "threads", "peak_rss_mb", "wav2lip_fps_b16")


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def summarize_pipeline(cfg: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    stages = medians(raw["runs"])
    s_enc = stages["encode"]
    used_detection = raw["face_mode"] == "detect"
    with_detection = stages["total"] - stages["detect"] + stages["detect_s3fd"]
    with_box = stages["total"] - stages["detect"] + stages["detect_box"]
    stages["total_detect"] = round(stages["total"] if used_detection else with_detection, 4)
    stages["total_box"] = round(with_box, 4)
    return {
        "precision": cfg["precision"],
        "duration_s": cfg["duration"],
        "size": cfg["size"],
        "frames": raw["frames"],
        "face_mode": raw["face_mode"],
        "stages_s": stages,
        "wav2lip_fps": raw["wav2lip_fps"],
        "stream_fps": round(raw["frames"] / (stages["infer"] + stages["paste"] + s_enc), 2),
        "rtf": round(stages["total"] / cfg["duration"], 4),
        "rtf_box": round(stages["total_box"] / cfg["duration"], 4),
        "peak_rss_mb": raw["peak_rss_mb"],
        "rss_after_compile_mb": raw["rss_after_compile_mb"],
        "rss_after_warmup_mb": raw["rss_after_warmup_mb"],
        "compile_s": raw["compile_s"],
        "video_bytes": raw["video_bytes"],
        "loadavg": [raw["loadavg_start"], raw["loadavg_end"]],
        "runs": raw["runs"],
    }


def torch_comparison(torch_raw: dict[str, Any], pipeline: list[dict], seconds: float) -> dict:
    """Reference time / ours on the same input (one round): >1 means ours is faster."""
    stages = dict(torch_raw["stages_s"])
    stages["end_to_end"] = round(stages["total"] + stages["write"], 4)
    ratios = {}
    for row in pipeline:
        if row["duration_s"] != seconds or row["size"] != torch_raw["size"]:
            continue
        s = row["stages_s"]
        no_encode = s["no_encode_total"]
        ratios[row["precision"]] = {
            "ours_no_encode_s": round(no_encode, 3),
            "ours_total_s": s["total_detect"],
            "speedup_no_encode": round(stages["total"] / no_encode, 2),
            "speedup_end_to_end": round(stages["end_to_end"] / s["total_detect"], 2),
        }
    return {
        "input": f"{seconds:g} s speech, {torch_raw['size']}, S3FD detection",
        "note": "no encode: reference mel + detect + infer + paste in PyTorch vs ours doing the "
        "same (mel, prepare_face, iter_frames consumed); end to end: plus the reference's "
        "video writing (DIVX AVI, then ffmpeg's H.264 + AAC re-encode) vs our whole request "
        "(image/audio decode, VP9 + Opus encode)",
        "stages_s": stages,
        **{k: torch_raw[k] for k in TORCH_FACTS},
        "ratio_vs_ours": ratios,
    }


def micro_ratios(micro: dict[str, Any], torch_fps: float | None) -> dict[str, Any]:
    if not torch_fps:
        return {}
    return {
        precision: {b: round(fps / torch_fps, 2) for b, fps in result["fps"].items()}
        for precision, result in micro.items()
    }


# --- Report -----------------------------------------------------------------------------------


def fmt_row(cells: Sequence[Any], widths: Sequence[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))


def print_pipeline(rows: list[dict[str, Any]]) -> None:
    head = ["prec", "speech", "size", "frames", "img_dec", "aud_dec", "mel", "detect"]
    head += ["det_box", "infer*", "paste", "encode", "total", "W2L fps", "stream"]
    head += ["RTF", "RTF box", "peakRSS"]
    widths = [5, 6, 9, 6, 7, 7, 6, 6, 7, 7, 6, 7, 7, 7, 6, 6, 7, 8]
    print("\nPipeline (seconds, medians; service path, VP9 WebM; detect = S3FD):")
    print(fmt_row(head, widths))
    for r in rows:
        s = r["stages_s"]
        detect = s["detect"] if r["face_mode"] == "detect" else s["detect_s3fd"]
        cells = [r["precision"], f"{r['duration_s']:g}s", r["size"], r["frames"]]
        cells += [f"{s['image_decode']:.3f}", f"{s['audio_decode']:.3f}", f"{s['mel']:.3f}"]
        cells += [f"{detect:.3f}"]
        cells += [f"{s[k]:.3f}" for k in ("detect_box", "infer", "paste", "encode", "total_detect")]
        cells += [f"{r['wav2lip_fps']:.1f}", f"{r['stream_fps']:.1f}"]
        cells += [f"{r['rtf']:.3f}", f"{r['rtf_box']:.3f}", f"{r['peak_rss_mb']:.0f}MB"]
        print(fmt_row(cells, widths))
    print(
        "* infer = waiting for Wav2Lip (it runs while the previous batch is pasted and "
        "encoded); W2L fps = Wav2Lip alone; stream = frames / (infer + paste + encode)"
    )


def print_micro(micro: dict[str, Any], torch_fps: float | None, ratios: dict) -> None:
    if not micro:
        return
    batches = list(next(iter(micro.values()))["fps"])
    widths = [9] + [13] * len(batches)
    print(
        "\nWav2Lip stage only, frames/s median/best (one face encoded once, as for an image; "
        "sync, 1 request):"
    )
    print(fmt_row(["precision", *[f"b{b}" for b in batches]], widths))
    for precision, result in micro.items():
        cells = [f"{result['fps'][b]:.1f}/{result['fps_best'][b]:.1f}" for b in batches]
        print(fmt_row([precision, *cells], widths))
    print("Image path (face encoded once) against the whole network, same run, frames/s ratio:")
    for precision, result in micro.items():
        whole = result["fps_whole"]
        print(
            f"  {precision}: "
            + ", ".join(f"b{b} {result['fps'][b] / whole[b]:.2f}x" for b in batches)
        )
    print(
        "Difference from f32 on the same inputs (96x96 uint8 mouths; untrained weights amplify it):"
    )
    for precision, result in micro.items():
        acc = result["vs_f32"]
        print(
            f"  {precision}: max abs {acc['max_abs']}, mean abs {acc['mean_abs']}, "
            f"PSNR {acc['psnr_db']} dB"
        )
    if torch_fps:
        print(f"PyTorch fp32 batch {TORCH_BATCH}: {torch_fps:.1f} frames/s; ratio ours/torch:")
        for precision, by_batch in ratios.items():
            print(f"  {precision}: " + ", ".join(f"b{b} {x:.2f}x" for b, x in by_batch.items()))
    for precision, result in micro.items():
        for hint, h in result.get("hints", {}).items():
            print(
                f"  {precision} b{HINT_BATCH} {hint}: {h['fps']:.1f}/{h['fps_best']:.1f} frames/s "
                f"({h['streams']} streams, {h['requests']} requests in flight, "
                f"{h['threads']} threads)"
            )


def print_torch(comparison: dict[str, Any]) -> None:
    s = comparison["stages_s"]
    print(
        f"\nPyTorch reference ({comparison['input']}; medians of {comparison['rounds']} "
        f"rounds alternating with ours; {comparison['note']}):"
    )
    print(
        f"  mel {s['mel']:.3f}  detect {s['detect']:.3f}  infer+paste {s['infer_paste']:.3f}"
        f"  no-encode total {s['total']:.3f}  write {s['write']:.3f}  end to end "
        f"{s['end_to_end']:.3f} s  peak RSS {comparison['peak_rss_mb']:.0f} MB"
    )
    for precision, r in comparison["ratio_vs_ours"].items():
        spread = [x["ratio_vs_ours"][precision] for x in comparison["per_round"]]
        no_encode_range, end_to_end_range = (
            f"{min(x[key] for x in spread):.2f}-{max(x[key] for x in spread):.2f}"
            for key in ("speedup_no_encode", "speedup_end_to_end")
        )
        print(
            f"  vs ours {precision}: {r['speedup_no_encode']:.2f}x faster without encode "
            f"({r['ours_no_encode_s']:.3f} s; rounds {no_encode_range}), "
            f"{r['speedup_end_to_end']:.2f}x end to end ({r['ours_total_s']:.3f} s; "
            f"rounds {end_to_end_range})"
        )


def print_report(report: dict[str, Any]) -> None:
    """The pipeline, microbenchmark and (when run) torch baseline tables."""
    torch_fps = report.get("torch_baseline", {}).get("wav2lip_fps_b16")
    print_pipeline(report["pipeline"])
    print_micro(report["micro"], torch_fps, report["micro_ratio_vs_torch_b16"])
    if "torch_baseline" in report:
        print_torch(report["torch_baseline"])


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
