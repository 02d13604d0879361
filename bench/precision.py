"""The microbenchmark child: Wav2Lip alone at each batch size for one precision (f32, bf16,
int8), its difference from f32 on the same inputs, and the LATENCY vs THROUGHPUT hints.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from bench.models import MODEL, OV_CACHE, int8_hint, int8_xml
from bench.stages import fps_stats
from lipsync.conversion import generated_inputs, quantize_int8
from lipsync.runtime.core import CompiledNetwork, make_core
from lipsync.runtime.wav2lip import (
    AUDIO_INPUT,
    FACE_INPUT,
    Wav2LipGenerator,
    add_preprocessing,
    audio_input,
    to_uint8_faces,
)

HINT_BATCH = 16
ACCURACY_BATCH = 16


def micro_inputs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows (count, 80, 16) and uint8 face inputs (count, 96, 96, 6), generated."""
    return generated_inputs.engine_inputs(count, seed=7)


def generator_network(
    core: ov.Core, cfg: dict[str, Any], preprocess=add_preprocessing, config: dict | None = None
) -> CompiledNetwork:
    """The generator IR of this precision; by default the whole network."""
    precision = cfg["precision"]
    xml = int8_xml(Path(cfg["models_dir"])) if precision == "int8" else None
    return CompiledNetwork(
        core,
        xml or Path(cfg["models_dir"]) / f"{MODEL}.xml",
        device="CPU",
        precision=int8_hint() if precision == "int8" else precision,
        preprocess=preprocess,
        extra_config=config,
    )


def bench_generator(core: ov.Core, cfg: dict[str, Any]) -> Wav2LipGenerator:
    """The generator as the engine builds it: whole network, face encoder, decoder."""
    return Wav2LipGenerator.from_ir(functools.partial(generator_network, core, cfg))


def hint_variants(core: ov.Core, cfg: dict[str, Any], mels, faces) -> dict[str, Any]:
    """Batch-16 frames/s of the whole network under the LATENCY hint (as the engine runs:
    one request at a time) against the THROUGHPUT hint with its optimal number of async
    requests in flight."""
    out: dict[str, Any] = {}
    inputs = {AUDIO_INPUT: audio_input(mels[:HINT_BATCH]), FACE_INPUT: faces[:HINT_BATCH]}
    for hint in ("LATENCY", "THROUGHPUT"):
        network = generator_network(core, cfg, config={"PERFORMANCE_HINT": hint})
        compiled = network.compile()
        jobs = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        queue = ov.AsyncInferQueue(compiled, jobs)
        queue.set_callback(lambda req, _: to_uint8_faces(req.get_output_tensor(0).data))
        rounds = 4 * jobs

        def burst(queue=queue, rounds=rounds) -> None:
            for _ in range(rounds):
                queue.start_async(inputs)
            queue.wait_all()

        median, best = fps_stats(burst, rounds * HINT_BATCH, 3.0, 3)
        out[hint] = {
            "streams": compiled.get_property("NUM_STREAMS"),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "requests": jobs,
            "fps": median,
            "fps_best": best,
        }
    return out


def accuracy_vs_f32(core: ov.Core, cfg: dict[str, Any], generator, mels, faces) -> dict:
    """Max abs difference and PSNR of the 96x96 mouths against f32 on the same inputs."""
    reference = bench_generator(core, {**cfg, "precision": "f32"})
    ours, expected = [], []
    for start in range(0, len(mels), ACCURACY_BATCH):
        part = slice(start, start + ACCURACY_BATCH)
        ours.append(generator.infer(mels[part], faces[part]))
        expected.append(reference.infer(mels[part], faces[part]))
    return quantize_int8.difference(np.concatenate(expected), np.concatenate(ours))


def micro_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Wav2Lip stage only, frames/s per batch size: one face encoded once, then the decoder
    per batch, as for an image (`fps`), and the whole network with a face per window, as
    for a video (`fps_whole`), the two in turn at each batch size."""
    core = make_core(OV_CACHE)
    generator = bench_generator(core, cfg)
    compiled = generator.decoder.compile()
    mels, faces = micro_inputs(max(cfg["batches"]))
    features = generator.encode_face(faces[:1])
    variants = {
        "fps": lambda b: generator.start_with_face(mels[:b], features).wait(),
        "fps_whole": lambda b: generator.start(mels[:b], faces[:b]).wait(),
    }
    result: dict[str, Any] = {key: {} for key in variants} | {"fps_best": {}}
    for batch in cfg["batches"]:
        for key, run in variants.items():
            median, best = fps_stats(functools.partial(run, batch), batch, cfg["min_time"], 3)
            result[key][str(batch)] = median
            if key == "fps":
                result["fps_best"][str(batch)] = best
    result |= {
        "hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
    }
    result["vs_f32"] = accuracy_vs_f32(core, cfg, generator, mels, faces)
    if cfg.get("hints"):
        result["hints"] = hint_variants(core, cfg, mels, faces)
    return result
