"""The /api/stream protocol as a machine-readable document (GET /api/stream/protocol.json),
built from its declaration (`protocol.py`): the JSON Schemas of every message, the binary
headers and message types, the subprotocols and the close codes."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from lipsync.server.realtime import protocol as p


def protocol_document() -> dict[str, Any]:
    """The protocol, machine-readable (served at /api/stream/protocol.json)."""
    client = TypeAdapter(p.ClientMessage).json_schema(ref_template="#/components/schemas/{model}")
    server = TypeAdapter(p.ServerMessage).json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    return {
        "protocol": "lipsync-realtime",
        "version": 1,
        "url": "/api/stream",
        "description": p.__doc__,
        "client_messages": {"text": client, "binary": "raw PCM in the start's audio.encoding"},
        "server_messages": {
            "text": server,
            "binary": {
                "struct": p.FRAME_HEADER.format,
                "fields": [
                    "magic",
                    "type",
                    "reserved",
                    "reserved",
                    "index",
                    "pts_ms",
                    "length",
                    "crc32",
                ],
                "magic": p.FRAME_MAGIC.decode(),
                "types": {str(kind): meaning for kind, meaning in p.FRAME_TYPES.items()},
                "size": p.FRAME_HEADER.size,
                "patch_header": {
                    "struct": p.PATCH_HEADER.format,
                    "fields": ["base", "x", "y", "width", "height"],
                    "size": p.PATCH_HEADER.size,
                    "in": "the payload of types 5 and 6, before the JPEG",
                },
            },
        },
        "subprotocols": {
            "answered": p.SUBPROTOCOL,
            "api_key": f"offer {p.KEY_SUBPROTOCOL_PREFIX}<key> next to {p.SUBPROTOCOL} (browsers: "
            f"new WebSocket(url, ['{p.SUBPROTOCOL}', '{p.KEY_SUBPROTOCOL_PREFIX}' + key])); a "
            "wrong or missing key is refused before the upgrade (401)",
        },
        "close_codes": {
            str(p.CLOSE_NORMAL): "`end` received",
            str(p.CLOSE_PROTOCOL_ERROR): "a frame that breaks RFC 6455 (unmasked, reserved bits "
            "or opcodes, a stray continuation)",
            str(p.CLOSE_UNSUPPORTED_DATA): "audio before `start`, or an unknown message type",
            str(p.CLOSE_INVALID_PAYLOAD): "bad JSON, base64, PCM length, or an invalid message",
            str(p.CLOSE_POLICY): "no `start` in time, session too long, client idle, the reader "
            "stalled, or `start` refused (after an `error` message)",
            str(p.CLOSE_TOO_BIG): "a message over the size limit",
            str(p.CLOSE_INTERNAL): "server error",
            str(p.CLOSE_TRY_AGAIN): "every live session taken when `start` came: retry later",
        },
        "components": {"schemas": schemas},
    }
