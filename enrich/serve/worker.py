"""The models' own process: `python -m enrich.serve.worker`, started by `ModelPool` (one or more of them).

As in Triton's Python backend (a stub process per model instance) and BentoML's runners, the models live apart from
the HTTP processes, which only parse, check and answer: they never share a GIL. A worker loads the index, encoder
and tagger once (`Models`), then reads requests from every HTTP process on its Unix socket, puts what is waiting
through the models together (`BatchQueue`: the API's requests and the pages' work first, an upload's chunks only
when no interactive work waits) and answers each with its own rows. It reads new requests only between batches, so
whatever queued while the models were busy goes into the next batch at once. It exits when its parent does (the
parent holds its stdin open).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass

import polars as pl

from enrich.catalog import Columns, frame_from_records
from enrich.errors import EnrichError, InputError
from enrich.run.explain import explain_listing
from enrich.run.models import Models, ModelSources
from enrich.run.score import DESCRIBED, enrich_frame
from enrich.serve.conflicts import conflicts
from enrich.serve.wire import BULK, WireError, bytes_frame, frame_bytes, pack, to_json, unpack

# The API's answer for each listing: the output contract's columns without the LLM stage's (the server has none).
API_COLUMNS_DROPPED = DESCRIBED


class ModelWork:
    """The loaded models and each kind of work a worker does with them; in-process, for a benchmark or a test."""

    def __init__(self, models: Models, conflict_cosine: float = 0.95):
        self.models, self.conflict_cosine = models, conflict_cosine
        self.index, self.encoder, self.tagger, self.config = models.index, models.encoder, models.tagger, models.config
        self._conflicts: bytes | None = None

    def enrich_requests(self, requests: list[list[dict]]) -> list[dict]:
        """Several requests' listings as one frame, each listing known by its position (so that two requests may
        hold the same id, and an id comes back exactly as it was sent); each request gets its answer: the output
        contract's rows, as the JSON body the API sends, or the listings refused, with their position in it."""
        listings = [listing for request in requests for listing in request]
        frame = frame_from_records([{**listing, "id": str(i)} for i, listing in enumerate(listings)], Columns(),
                                   self.config.cleaning)
        output = enrich_frame(frame, self.index, self.encoder, self.config, tagger=self.tagger).drop(*API_COLUMNS_DROPPED)
        rows, statuses = output.to_dicts(), output["status"].to_list()
        answers, start = [], 0
        for request in requests:
            end = start + len(request)
            refused = [{"listing": i, "id": listing["id"], "error": statuses[start + i].split(" ", 3)[3]}
                       for i, listing in enumerate(request) if statuses[start + i] != "ok"]
            if refused:
                answers.append({"refused": refused})
            else:
                for row, listing in zip(rows[start:end], request):
                    row["id"] = listing["id"]
                answers.append({"body": to_json({"listings": rows[start:end]})})
            start = end
        return answers

    def enrich_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A standard frame's output rows (an uploaded catalog's chunk)."""
        return enrich_frame(frame, self.index, self.encoder, self.config, tagger=self.tagger)

    def explain(self, listing: dict) -> bytes:
        record = {"id": listing["id"], "title": listing["title"], "brand": listing["brand"],
                  "description": listing["text"], "category": listing["given_category"], "tags": listing["tags"]}
        row = frame_from_records([record], Columns(), self.config.cleaning)
        return to_json(asdict(explain_listing(row, self.index, self.encoder, self.config, self.tagger)))

    def conflicts(self) -> bytes:
        if self._conflicts is None:  # once per worker: the index does not change under it
            self._conflicts = to_json([asdict(c) for c in conflicts(self.index, self.conflict_cosine)])
        return self._conflicts

    def summary(self) -> dict:
        """What the pages and `/v1/info` show about the models: the index, the known paths."""
        index, manifest = self.index, self.index.manifest
        known = sorted(set(index.categories[index.categories != None].tolist())  # noqa: E711
                       | set(self.tagger.labels if self.tagger else ()))
        return {"known_paths": known, "info": {
            "index": str(index.folder), "built_at": manifest["built_at"], "format": manifest["format"],
            "listings": manifest["counts"]["indexed"], "categories": len(known),
            "encoder": manifest["encoder"]["model_name"], "tagger": self.tagger.info["source"] if self.tagger else None,
            "updates": len(manifest["updates"]), "config": {"neighbors": self.config.vote.top_k}}}


@dataclass
class Job:
    """One request read from an HTTP process, waiting for the models."""

    link: object  # the connection to answer on
    number: int  # the HTTP process's number for it
    op: str  # enrich | frame | explain | conflicts | summary | stats
    payload: object  # enrich: the listings; frame: a standard frame; explain: the stored listing
    size: int  # listings
    priority: int  # wire.INTERACTIVE or wire.BULK
    arrived: float  # time.monotonic() when it was sent (one clock for every process of the machine)


class BatchQueue:
    """What the models do next. Interactive work first: consecutive `enrich` requests are put through together, up
    to `max_listings` listings, once the first has waited `wait_s` (counted from its arrival, so that a request that
    queued while the models were busy does not wait again) or at once when more is queued behind them; other
    interactive work one at a time; an upload's chunk only when no interactive work is waiting. The clock is the
    caller's: `take(now)` and `due(now)` are pure."""

    def __init__(self, max_listings: int, wait_s: float):
        self.max_listings, self.wait = max_listings, wait_s
        self.interactive: deque[Job] = deque()
        self.bulk: deque[Job] = deque()

    def put(self, job: Job) -> None:
        (self.bulk if job.priority == BULK else self.interactive).append(job)

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def due(self, now: float) -> float | None:
        """Seconds until `take` has work to give (0: now), None when nothing is queued."""
        if self.interactive:
            head = self.interactive[0]
            return 0.0 if self._ready(now) else max(head.arrived + self.wait - now, 0.0)
        return 0.0 if self.bulk else None

    def take(self, now: float) -> list[Job]:
        """The jobs to run together now; [] when none is due yet."""
        if self.interactive:
            if not self._ready(now):
                return []
            batch = self._enrich_run()
            for _ in batch:
                self.interactive.popleft()
            return batch or [self.interactive.popleft()]
        return [self.bulk.popleft()] if self.bulk else []

    def drop(self, link) -> None:
        """Forget the work of a connection that closed: nobody is left to answer."""
        self.interactive = deque(j for j in self.interactive if j.link is not link)
        self.bulk = deque(j for j in self.bulk if j.link is not link)

    def _enrich_run(self) -> list[Job]:
        batch, size = [], 0
        for job in self.interactive:
            if job.op != "enrich" or (batch and size + job.size > self.max_listings):
                break
            batch.append(job)
            size += job.size
        return batch

    def _ready(self, now: float) -> bool:
        head = self.interactive[0]
        if head.op != "enrich":
            return True
        batch = self._enrich_run()
        return (sum(j.size for j in batch) >= self.max_listings or len(batch) < len(self.interactive)
                or now >= head.arrived + self.wait)


class Worker:
    """The loop of a model worker: read what every connection sent, run what is due, answer, again."""

    def __init__(self, work: ModelWork, listener: socket.socket, queue: BatchQueue, parent_fd: int | None = 0):
        self.work, self.listener, self.queue = work, listener, queue
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, self._accept)
        if parent_fd is not None:
            self.selector.register(parent_fd, selectors.EVENT_READ, self._parent)
        self.buffers: dict[socket.socket, bytearray] = {}
        self.batches = self.listings = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            for key, _ in self.selector.select(self.queue.due(time.monotonic())):
                key.data(key.fileobj)
            batch = self.queue.take(time.monotonic())
            if batch:
                self._execute(batch)

    def _accept(self, listener: socket.socket) -> None:
        link, _ = listener.accept()
        link.settimeout(60)  # an HTTP process that stops reading its answers is dropped, not waited on forever
        self.buffers[link] = bytearray()
        self.selector.register(link, selectors.EVENT_READ, self._read)

    def _parent(self, fd: int) -> None:
        if not os.read(fd, 4096):  # the parent is gone (or closed our stdin to stop us)
            self.running = False

    def _read(self, link: socket.socket) -> None:
        try:
            data = link.recv(1 << 20)
            if not data:
                return self._close(link)
            buffer = self.buffers[link]
            buffer += data
            while (message := unpack(buffer)) is not None:
                self._queue(link, *message)
        except (OSError, WireError, ValueError) as error:
            print(f"enrich serve: model worker: dropping a connection: {error}", file=sys.stderr, flush=True)
            self._close(link)

    def _queue(self, link: socket.socket, header: dict, body: bytes) -> None:
        op = header["op"]
        payload = (json.loads(body) if op in ("enrich", "explain") else bytes_frame(body) if op == "frame" else None)
        size = len(payload) if op == "enrich" else payload.height if op == "frame" else 1
        arrived = min(float(header.get("sent", 0.0)), time.monotonic())
        self.queue.put(Job(link, int(header["n"]), op, payload, size, int(header.get("priority", 0)), arrived))

    def _close(self, link: socket.socket) -> None:
        self.selector.unregister(link)
        self.buffers.pop(link, None)
        self.queue.drop(link)
        link.close()

    def _execute(self, batch: list[Job]) -> None:
        try:
            answers = self._answers(batch)
        except Exception as error:
            if len(batch) > 1:  # one request's listings broke the batch: each alone, so that only its sender hears
                for job in batch:
                    self._execute([job])
                return
            if not isinstance(error, EnrichError):
                traceback.print_exc(file=sys.stderr)
            kind = "input" if isinstance(error, EnrichError) else "bug"
            message = str(error) if kind == "input" else f"{type(error).__name__}: {error}"
            answers = [(pack({"n": batch[0].number, "error": message, "kind": kind}), batch[0])]
        self.batches += 1
        self.listings += sum(job.size for job in batch)
        for message, job in answers:
            if job.link in self.buffers:
                try:
                    job.link.sendall(message)
                except OSError:
                    self._close(job.link)

    def _answers(self, batch: list[Job]) -> list[tuple[bytes, Job]]:
        job = batch[0]
        if job.op == "enrich":
            answers = self.work.enrich_requests([j.payload for j in batch])
            return [(pack({"n": j.number, "refused": a["refused"]}) if "refused" in a else pack({"n": j.number}, a["body"]), j)
                    for j, a in zip(batch, answers)]
        if job.op == "frame":
            return [(pack({"n": job.number}, frame_bytes(self.work.enrich_frame(job.payload))), job)]
        if job.op == "explain":
            return [(pack({"n": job.number}, self.work.explain(job.payload)), job)]
        if job.op == "conflicts":
            return [(pack({"n": job.number}, self.work.conflicts()), job)]
        if job.op == "summary":
            return [(pack({"n": job.number}, to_json(self.work.summary())), job)]
        if job.op == "stats":
            return [(pack({"n": job.number}, to_json({"batches": self.batches, "listings": self.listings})), job)]
        raise InputError(f"unknown work {job.op!r}")


def main(argv: list[str] | None = None) -> int:
    """Load the models, say so on stdout (one JSON line), then serve the listening socket passed as a descriptor."""
    parser = argparse.ArgumentParser(prog="python -m enrich.serve.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the listening Unix socket, inherited")
    parser.add_argument("--index", required=True)
    parser.add_argument("--model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-listings", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--conflict-cosine", type=float, default=0.95)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us in order
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        models = Models(ModelSources(args.index, args.model))
        work = ModelWork(models, args.conflict_cosine)
        work.enrich_requests([[{"id": "warm-up", "title": "warm up"}]])  # every piece loaded before the first request
    except EnrichError as error:
        print(json.dumps({"error": str(error), "kind": type(error).__name__}), flush=True)
        return 2
    listener = socket.socket(fileno=args.fd)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    Worker(work, listener, BatchQueue(args.batch_listings, args.batch_wait_ms / 1000)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
