"""How the HTTP processes and the model workers talk: messages over a Unix socket, each a JSON header and a body
(JSON, an Arrow IPC table, or a ready HTTP answer), length-prefixed. Nothing here unpickles: a listing a client sent
reaches the models as JSON text or an Arrow table, never as an object that could run code when read."""

from __future__ import annotations

import io
import json
import math
import struct

import polars as pl

PREFIX = struct.Struct(">II")  # the header's length, the body's length
MAX_MESSAGE = 1 << 30  # a message is refused beyond this: a damaged stream, not a request

# The work a model worker does, and how urgent it is: interactive work (the API, a page) goes before an upload's
# chunks, so that an upload never starves the API.
INTERACTIVE, BULK = 0, 1


class WireError(Exception):
    """A message that cannot be read: the stream is damaged, so the connection is dropped."""


def pack(header: dict, body: bytes = b"") -> bytes:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(encoded), len(body)) + encoded + body


def unpack(buffer: bytearray) -> tuple[dict, bytes] | None:
    """The first whole message in `buffer`, taken out of it; None while it is incomplete."""
    if len(buffer) < PREFIX.size:
        return None
    header_size, body_size = PREFIX.unpack_from(buffer)
    if header_size + body_size > MAX_MESSAGE:
        raise WireError(f"a message of {header_size + body_size} bytes")
    end = PREFIX.size + header_size + body_size
    if len(buffer) < end:
        return None
    header = json.loads(bytes(buffer[PREFIX.size:PREFIX.size + header_size]))
    body = bytes(buffer[PREFIX.size + header_size:end])
    del buffer[:end]
    return header, body


def frame_bytes(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_ipc(out)
    return out.getvalue()


def bytes_frame(body: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(body))


def to_json(value) -> bytes:
    """JSON that any client can read: non-finite floats (which JSON has no word for) as null, text as UTF-8."""
    return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
