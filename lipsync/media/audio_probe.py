"""How long an uploaded speech file says it is, read from its header without decoding it.

A few kilobytes of compressed silence can decode to minutes of samples: the service checks
the declared duration against its limit before decoding (the decoded length is checked
again afterwards, for files whose header says nothing or lies).
"""

from __future__ import annotations

import io
import logging

import av
import soundfile as sf

logger = logging.getLogger(__name__)


def declared_audio(data: bytes) -> tuple[float, int] | None:
    """(seconds, sample rate) the file's header declares, or None when it does not say (or
    the data is not audio: decoding will tell)."""
    try:
        info = sf.info(io.BytesIO(data))
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate, int(info.samplerate)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        pass
    return _container_audio(data)


def _container_audio(data: bytes) -> tuple[float, int] | None:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base), int(stream.sample_rate)
            if container.duration is not None:
                return container.duration / av.time_base, int(stream.sample_rate)
    except Exception as exc:  # best effort: decoding reports what is wrong with the file
        logger.debug("no declared duration: %s", exc)
    return None
