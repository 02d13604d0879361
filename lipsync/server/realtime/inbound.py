"""What a live session's client sends, decoded: its JSON messages (validated by the
protocol's models) and its raw PCM. Each refusal is a SessionClosed with the close code
and a reason that names the field."""

from __future__ import annotations

import numpy as np
import pydantic

from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.writer import SessionClosed


def decode_pcm(data: bytes, fmt: p.AudioFormat) -> np.ndarray:
    """Raw interleaved PCM -> (n,) float32 mono; SessionClosed 1007 if not whole samples."""
    frame_bytes = p.SAMPLE_BYTES[fmt.encoding] * fmt.channels
    if len(data) % frame_bytes:
        raise SessionClosed(
            p.CLOSE_INVALID_PAYLOAD,
            f"audio of {len(data)} bytes is not a whole number of {frame_bytes}-byte samples",
        )
    if fmt.encoding == "pcm_s16le":
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, "<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, "audio has NaN or infinite samples")
    return samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)


def parse_text(text: str) -> p.Start | p.Audio | p.Flush | p.Interrupt | p.Ping | p.End:
    """A client's JSON message; SessionClosed 1007 (bad JSON/fields) or 1003 (unknown type)."""
    try:
        return p.CLIENT_MESSAGE.validate_json(text)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise SessionClosed(p.CLOSE_UNSUPPORTED_DATA, "unknown message type") from None
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, f"{where}: {first['msg']}"[:120]) from None
