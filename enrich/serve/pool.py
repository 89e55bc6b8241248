"""The model workers seen from the server: `ModelPool` starts them (and starts again one that dies), `ModelClient` is
how an HTTP process sends them work and waits for the answers.

Each worker is its own process with its share of the cores (as Ray Serve gives a replica `num_cpus` and BentoML a
runner its threads): one worker with every core by default. Each listens on a Unix socket in a private folder
(mode 0700) that the pool holds open, so that a worker started again after a crash finds the requests that queued
meanwhile. An HTTP process keeps one connection to each worker and sends a request to the one with the fewest
listings outstanding.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from enrich import errors
from enrich.environment import child_environment
from enrich.errors import EnrichError, InputError
from enrich.serve.wire import INTERACTIVE, WireError, pack, unpack
from enrich.settings import ServeConfig


class ModelsBusy(EnrichError):
    """More listings wait for the models than the server accepts (`max_pending_listings`): try again shortly."""


class ModelsUnavailable(EnrichError):
    """The models' process stopped (it is started again) or did not answer in time."""


class Refused(InputError):
    """Listings of one request that cannot be enriched: each with its position, id and why."""

    def __init__(self, details: list[dict]):
        super().__init__(details)
        self.details = details


class ModelPool:
    """`count` model workers for `config`'s index, each with `threads` cores, started again when one dies."""

    def __init__(self, config: ServeConfig, count: int = 1, threads: int | None = None, start_timeout_s: float = 600):
        self.config, self.count = config, max(1, count)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.count)
        self.start_timeout = start_timeout_s
        self.folder = Path(tempfile.mkdtemp(prefix="enrich-serve-"))  # 0700: only this user reaches the sockets
        self.sockets = [str(self.folder / f"models-{i}.sock") for i in range(self.count)]
        self.listeners: list[socket.socket] = []
        self.processes: list[subprocess.Popen | None] = [None] * self.count
        self.restarts = 0
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None

    def start(self) -> "ModelPool":
        """Every worker loaded (or the error of the first that could not load), then a thread that restarts them."""
        try:
            for path in self.sockets:
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(path)
                listener.listen(128)
                self.listeners.append(listener)
            for i in range(self.count):
                self.processes[i] = self._spawn(i)
            for i in range(self.count):
                self._wait_ready(self.processes[i])
        except BaseException:
            self.stop()
            raise
        self.watcher = threading.Thread(target=self._watch, name="enrich-model-pool", daemon=True)
        self.watcher.start()
        return self

    def _spawn(self, i: int) -> subprocess.Popen:
        c = self.config
        listener = self.listeners[i]
        command = [sys.executable, "-m", "enrich.serve.worker", "--fd", str(listener.fileno()), "--index", str(c.index),
                   "--threads", str(self.threads), "--batch-listings", str(c.batch_listings),
                   "--batch-wait-ms", str(c.batch_wait_ms), "--conflict-cosine", str(c.conflict_cosine)]
        if c.model:
            command += ["--model", str(c.model)]
        environment = child_environment(OMP_NUM_THREADS=str(self.threads), POLARS_MAX_THREADS=str(self.threads))
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[listener.fileno()],
                                env=environment)

    def _wait_ready(self, process: subprocess.Popen) -> None:
        reader = threading.Thread(target=lambda: setattr(process, "said", process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout)
        said = getattr(process, "said", b"")
        try:
            message = json.loads(said) if said else {}
        except ValueError:
            message = {}
        if message.get("ready"):
            return
        if "error" in message:
            raise getattr(errors, message.get("kind", ""), errors.ArtifactError)(message["error"])
        raise ModelsUnavailable(f"the model worker did not start (exit code {process.poll()}): see the lines above")

    def _watch(self) -> None:
        while not self.stopping.wait(0.5):
            for i, process in enumerate(self.processes):
                if process is None or process.poll() is None:
                    continue
                # A SIGTERM usually reaches the whole group (systemd, a terminal, kill -- -PGID): this process is
                # stopping too, and starting the worker again would only leave one behind. Wait to see.
                if process.returncode == -signal.SIGTERM and self.stopping.wait(10):
                    return
                if not self.stopping.is_set():
                    print(f"enrich serve: the model worker (pid {process.pid}) stopped with code {process.returncode};"
                          " starting it again", file=sys.stderr, flush=True)
                    self.restarts += 1
                    try:
                        self.processes[i] = self._spawn(i)
                        self._wait_ready(self.processes[i])
                    except Exception as error:  # tried again on the next round
                        print(f"enrich serve: the model worker could not start again: {error}", file=sys.stderr, flush=True)
                        time.sleep(5)

    def stop(self) -> None:
        """Close each worker's stdin (it exits), wait a little, then kill what is left; remove the sockets."""
        self.stopping.set()
        for process in self.processes:
            if process is not None and process.stdin:
                process.stdin.close()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for listener in self.listeners:
            listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class Link:
    """One HTTP process's connection to one worker: requests out, answers matched back to them by number."""

    def __init__(self, path: str):
        self.path = path
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: dict[int, tuple[asyncio.Future, int]] = {}
        self.outstanding = 0  # listings sent and not yet answered
        self.connecting = asyncio.Lock()

    async def send(self, number: int, header: dict, body: bytes, size: int) -> asyncio.Future:
        async with self.connecting:
            if self.writer is None or self.writer.is_closing():
                reader, self.writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
                asyncio.get_running_loop().create_task(self._read(reader, self.writer))
        future = asyncio.get_running_loop().create_future()
        self.waiting[number] = (future, size)
        self.outstanding += size
        self.writer.write(pack({**header, "n": number, "sent": time.monotonic()}, body))
        return future

    def forget(self, number: int) -> None:
        _, size = self.waiting.pop(number, (None, 0))
        self.outstanding -= size

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(1 << 20):
                buffer += chunk
                while (message := unpack(buffer)) is not None:
                    header, body = message
                    future, size = self.waiting.pop(header["n"], (None, 0))
                    self.outstanding -= size
                    if future is not None and not future.done():
                        future.set_result((header, body))
        except (OSError, WireError, ValueError):
            pass
        writer.close()
        if self.writer is writer:
            self.writer = None
        lost = ModelsUnavailable("the models' process stopped while working on this request; it is being started"
                                 " again: try again in a few seconds")
        for future, _ in self.waiting.values():
            if not future.done():
                future.set_exception(lost)
        self.waiting.clear()
        self.outstanding = 0


class ModelClient:
    """Work for the model workers from an HTTP process: `call` (async, on the event loop) and `call_sync` (from a
    thread: a page handler, an upload's job)."""

    def __init__(self, sockets: list[str], max_pending_listings: int, timeout_s: float):
        self.paths = sockets
        self.max_pending, self.timeout = max_pending_listings, timeout_s
        self.links: list[Link] = []
        self.numbers = itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.links = [Link(path) for path in self.paths]

    async def close(self) -> None:
        for link in self.links:
            if link.writer is not None:
                link.writer.close()

    @property
    def pending(self) -> int:
        return sum(link.outstanding for link in self.links)

    async def call(self, op: str, body: bytes = b"", size: int = 1, priority: int = INTERACTIVE) -> tuple[dict, bytes]:
        """The worker's answer (header, body); `ModelsBusy` when too much is waiting already, `ModelsUnavailable`
        when the worker stopped or did not answer within the timeout, `InputError` for work it refused."""
        if priority == INTERACTIVE and self.pending + size > self.max_pending:
            raise ModelsBusy(f"the models have {self.pending} listings waiting: try again in a second")
        return await self._call_on(min(self.links, key=lambda link: link.outstanding), op, body, size, priority)

    async def call_each(self, op: str) -> list[tuple[dict, bytes]]:
        """Every worker's answer to `op` (their counters)."""
        return await asyncio.gather(*(self._call_on(link, op, b"", 1, INTERACTIVE) for link in self.links))

    async def _call_on(self, link: Link, op: str, body: bytes, size: int, priority: int) -> tuple[dict, bytes]:
        number = next(self.numbers)
        try:
            future = await link.send(number, {"op": op, "priority": priority}, body, size)
        except OSError as error:
            raise ModelsUnavailable(f"the models' process cannot be reached ({error}): try again in a few seconds") from None
        try:
            # An upload's chunk waits as long as interactive work keeps the models busy: that is the point.
            header, answer = await asyncio.wait_for(future, self.timeout if priority == INTERACTIVE else None)
        except asyncio.TimeoutError:
            link.forget(number)
            raise ModelsUnavailable(f"the models did not answer within {self.timeout:g} s") from None
        if "error" in header:
            raise (InputError if header.get("kind") == "input" else ModelsUnavailable)(header["error"])
        if "refused" in header:
            raise Refused(header["refused"])
        return header, answer

    def call_sync(self, op: str, body: bytes = b"", size: int = 1, priority: int = INTERACTIVE) -> tuple[dict, bytes]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(self.call(op, body, size, priority), self.loop).result()
        raise RuntimeError("call_sync from the event loop would wait on itself: await `call` instead")
