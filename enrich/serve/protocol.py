"""uvicorn's httptools protocol with the limits it lacks for a server on a network: a request's line and headers must
arrive within `header_timeout_s` (a slowloris client that trickles them is cut off with 408) and hold at most
`max_header_bytes` (431). uvicorn==0.54.0 is pinned: these hooks are its protocol's own methods."""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class ServerConfig(uvicorn.Config):
    """uvicorn's settings and ours; a module-level class, so that uvicorn's worker processes can be handed it."""

    def __init__(self, *args, header_timeout_s: float = 10.0, max_header_bytes: int = 64 * 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_header_bytes = header_timeout_s, max_header_bytes


class GuardedHttpProtocol(HttpToolsProtocol):
    """A connection whose next request's headers are awaited (from the connection's start, or the end of the last
    answer) for at most `header_timeout_s`, counting their bytes."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.header_timeout = getattr(config, "header_timeout_s", 10.0)
        self.max_header_bytes = getattr(config, "max_header_bytes", 64 * 1024)
        self.header_timer = None
        self.header_bytes: int | None = 0  # None once the headers are complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self.header_bytes = 0
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self._refuse(b"408 Request Timeout", b"the request's headers came too slowly\n")

    def _refuse(self, status: bytes, message: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                             b"content-length: " + str(len(message)).encode() + b"\r\n\r\n" + message)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.header_bytes is not None:  # still in a request's line and headers: count them, up to their end
            end = data.find(b"\r\n\r\n")
            self.header_bytes += len(data) if end < 0 else end + 4
            if self.header_bytes > self.max_header_bytes:
                self._stop_header_timer()
                self.header_bytes = None
                return self._refuse(b"431 Request Header Fields Too Large", b"the request's headers are too large\n")
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self.header_bytes = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_headers()

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)
