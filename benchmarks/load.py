"""The load generator of `make bench-serve`: HTTP/1.1 over keep-alive connections on asyncio streams, requests built
once as bytes. It shares the machine's cores with the server, so it is kept as cheap as a client can be (httpx
costs about ten times as much CPU per request); the benchmark reports the cores it used."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


class Connection:
    """One keep-alive connection; `request` sends a prepared request and reads the answer (Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> "Connection":
        parts = urlsplit(url)
        return cls(*await asyncio.open_connection(parts.hostname, parts.port))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in headers:
            raise RuntimeError(f"an answer without Content-Length: {lines[0]}")
        return status, await self.reader.readexactly(int(headers["content-length"]))

    def close(self) -> None:
        self.writer.close()


def prepared(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def enrich_request(host: str, token: str, listings: list[dict]) -> bytes:
    return prepared("POST", "/v1/enrich", host, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    json.dumps({"listings": listings}).encode())


async def load(url: str, requests: list[bytes], concurrency: int, listings_per_request: int = 1,
               stop: asyncio.Event | None = None) -> dict:
    """Each prepared request once, `concurrency` in flight at once (or until `stop` is set): latencies, requests/s,
    listings/s, and the errors (any status but 200)."""
    latencies, statuses = [], {}
    queue = list(reversed(requests))

    async def worker():
        connection = await Connection.open(url)
        try:
            while queue and not (stop is not None and stop.is_set()):
                raw = queue.pop()
                started = time.perf_counter()
                status, _ = await connection.request(raw)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    done = len(latencies)
    ms = np.array(latencies or [0.0]) * 1000
    return {"concurrency": concurrency, "requests": done, "errors": done - statuses.get(200, 0),
            "statuses": {str(k): v for k, v in statuses.items()}, "requests_per_s": done / seconds,
            "listings_per_s": done * listings_per_request / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
