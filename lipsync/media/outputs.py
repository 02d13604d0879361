"""Where the encoder's bytes go: a seekable in-memory file for a whole-file encode, or a
write-only sink drained chunk by chunk for a live stream, and the muxer options of each."""

from __future__ import annotations

import io
from typing import Any

# Longest media time (seconds) a live WebM cluster or MP4 fragment spans before the muxer
# closes it and its bytes can leave. The muxer closes a cluster on the first packet past
# the limit, so at most about this much encoded media waits for the next frames. Cost on
# a 5 s 512x512 talking head: WebM +0.04 % bytes; MP4 48 moof boxes of ~200 bytes, 3 %.
LIVE_FRAGMENT_S = 0.1


def container_options(container: str, *, live: bool) -> dict[str, str]:
    """FFmpeg muxer options for `container` ("webm" | "mp4").

    Whole file: MP4 with the moov atom moved in front (`+faststart`, which re-reads the
    output); WebM with its defaults (size, duration and cues written back at the end).
    Live: nothing is ever rewritten. WebM `live=1` (unknown segment size, no cues). MP4
    fragmented: a moov without samples, held back until the first fragment is cut
    (`delay_moov`, so its edit list can trim AAC's 1024 priming samples, which would
    otherwise put the speech 21 ms late), then a moof+mdat per fragment with offsets
    relative to the moof (what browsers' MediaSource expects). Both are cut every
    LIVE_FRAGMENT_S and flushed after every packet so no bytes sit in FFmpeg's I/O buffer.
    """
    if not live:
        return {"movflags": "+faststart"} if container == "mp4" else {}
    if container == "mp4":
        return {
            "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
            "frag_duration": str(round(LIVE_FRAGMENT_S * 1_000_000)),
            "flush_packets": "1",
        }
    return {
        "live": "1",
        "cluster_time_limit": str(round(LIVE_FRAGMENT_S * 1000)),
        "flush_packets": "1",
    }


class ChunkSink:
    """Write-only, non-seekable output (so muxers never seek back): keeps what was written
    since the last `drain`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.total = 0  # bytes written so far

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self.total += len(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        """The bytes written since the previous call (b"" if none)."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class SharedReader(io.RawIOBase):
    """Independent read-only cursor over the output BytesIO.

    FFmpeg's mp4 muxer re-opens its output for reading to move the moov atom to the front
    (movflags=+faststart); this serves that re-open from memory instead of a file.
    """

    def __init__(self, target: io.BytesIO) -> None:
        super().__init__()
        self._target = target
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        saved = self._target.tell()
        try:
            self._target.seek(self._pos)
            count = self._target.readinto(buffer)
        finally:
            self._target.seek(saved)
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._target.getbuffer().nbytes + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def avc_codec_string(extradata: bytes | None) -> str:
    """RFC 6381 name of an H.264 stream from its extradata (avcC, or Annex B with the SPS
    first): "avc1.PPCCLL" (profile, constraint flags, level in hex); "avc1" if unknown."""
    if extradata and extradata[0] == 1 and len(extradata) >= 4:  # avcC record
        return "avc1." + extradata[1:4].hex()
    if extradata:
        for start in (b"\x00\x00\x00\x01", b"\x00\x00\x01"):
            pos = extradata.find(start)
            sps = pos + len(start)
            if pos >= 0 and len(extradata) >= sps + 4 and extradata[sps] & 0x1F == 7:
                return "avc1." + extradata[sps + 1 : sps + 4].hex()
    return "avc1"
