"""What the server loads once and shares: the index, the encoder, the tagger, the review store, and the batcher that
puts concurrent requests through the models together."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from enrich.catalog import Columns, frame_from_records, load_catalog
from enrich.errors import InputError
from enrich.run.explain import Explanation, explain_listing
from enrich.run.models import Models, ModelSources
from enrich.run.score import enrich_frame
from enrich.serve.conflicts import Conflict, conflicts
from enrich.serve.store import Store
from enrich.settings import ServeConfig


class Refused(InputError):
    """Listings of one request that cannot be enriched: each with its position, id and why."""

    def __init__(self, details: list[dict]):
        super().__init__(details)
        self.details = details


class Batcher:
    """Concurrent API requests put through the models together: a request waits at most `wait_ms` for others, up to
    `max_listings` listings, then one frame is built, checked and enriched for all of them, in the models' thread, so
    that the event loop only parses and answers."""

    def __init__(self, workbench: "Workbench", max_listings: int, wait_ms: float):
        self.workbench, self.max_listings, self.wait = workbench, max_listings, wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrich-models")
        self.task: asyncio.Task | None = None
        self.batches = self.listings = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def enrich(self, records: list[dict]) -> list[dict]:
        """The output contract's rows for one request's listings, or `Refused` naming those that cannot be enriched."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        await self.queue.put((records, future, loop.time()))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            size = len(waiting[0][0])
            # The wait counts from the first request's arrival: requests that queued while the models were busy go
            # in at once, with the others already queued, instead of waiting again.
            deadline = waiting[0][2] + self.wait
            while size < self.max_listings:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                waiting.append(item)
                size += len(item[0])
            try:
                answers = await loop.run_in_executor(self.executor, self.workbench.enrich_requests, [r for r, _, _ in waiting])
            except Exception as error:  # every waiting request hears of it; the batcher goes on
                answers = [error] * len(waiting)
            self.batches, self.listings = self.batches + 1, self.listings + size
            for (_, future, _), answer in zip(waiting, answers):
                if future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


class Workbench:
    """The loaded index and models, the review store, and the work the server does with them."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.models = Models(ModelSources(config.index, config.model))
        self.encoder, self.index, self.tagger = self.models.encoder, self.models.index, self.models.tagger
        self.enrich_config = self.models.config
        self.store = Store(config.db)
        self.busy = threading.Lock()  # one batch through the models at a time: the API's and the uploads'
        self.known_paths = sorted(set(self.index.categories[self.index.categories != None].tolist())  # noqa: E711
                                  | set(self.tagger.labels if self.tagger else ()))
        self._conflicts: list[Conflict] | None = None
        self.uploads = Path(config.uploads or Path(config.db).resolve().parent / "enrich-uploads")
        self.started = time.time()

    def enrich(self, frame: pl.DataFrame) -> pl.DataFrame:
        with self.busy:
            return enrich_frame(frame, self.index, self.encoder, self.enrich_config, tagger=self.tagger)

    def enrich_requests(self, requests: list[list[dict]]) -> list[list[dict] | Refused]:
        """Several requests' listings as one frame: ids are told apart per request (a repeated id is refused within its
        request only), the frame is enriched once, and each request gets its rows, or `Refused`."""
        records = [{**listing, "id": f"{n}\x1f{listing['id']}"} for n, listings in enumerate(requests) for listing in listings]
        frame = self.frame(records)
        output = self.enrich(frame).with_columns(pl.col("id").str.split_exact("\x1f", 1).struct.field("field_1").alias("id"))
        answers, start = [], 0
        for listings in requests:
            part = output.slice(start, len(listings)).drop("attributes", "taxonomy_id", "taxonomy_path", "taxonomy_score")
            refused = part.with_row_index("listing").filter(pl.col("status") != "ok")
            answers.append(Refused([{"listing": i, "id": listing_id, "error": status.split(" ", 3)[3]}
                                    for i, listing_id, status in refused.select("listing", "id", "status").iter_rows()])
                           if refused.height else part.to_dicts())
            start += len(listings)
        return answers

    def frame(self, records: list[dict]) -> pl.DataFrame:
        return frame_from_records(records, Columns(), self.enrich_config.cleaning)

    def explain(self, listing: dict) -> Explanation:
        record = {"id": listing["id"], "title": listing["title"], "brand": listing["brand"],
                  "description": listing["text"], "category": listing["given_category"], "tags": listing["tags"]}
        with self.busy:
            return explain_listing(self.frame([record]), self.index, self.encoder, self.enrich_config, self.tagger)

    def conflicts(self) -> list[Conflict]:
        if self._conflicts is None:  # once per server: the index does not change under it
            with self.busy:
                self._conflicts = conflicts(self.index, self.config.conflict_cosine)
        return self._conflicts

    def info(self) -> dict:
        manifest = self.index.manifest
        return {"index": str(self.index.folder), "built_at": manifest["built_at"], "format": manifest["format"],
                "listings": manifest["counts"]["indexed"], "categories": len(self.known_paths),
                "encoder": manifest["encoder"]["model_name"], "tagger": self.tagger.info["source"] if self.tagger else None,
                "updates": len(manifest["updates"]), "config": {"neighbors": self.enrich_config.vote.top_k}}

    def import_output(self, name: str, listings: pl.DataFrame, output: pl.DataFrame, source: str) -> int:
        """A batch from `enrich run`'s output and its input (standard frame); the ids must line up row for row."""
        return import_output(self.store, name, listings, output, source)

    def import_upload(self, batch: int, path: Path, chunk: int = 256) -> None:
        """Enrich an uploaded catalog a chunk at a time into `batch` (run in a background thread)."""
        try:
            columns = self.store.batch_columns(batch) or self.config.columns  # as the upload's mapping step chose
            frame = load_catalog(path, columns, self.enrich_config.cleaning)
            self.store.set_rows(batch, frame.height)
            for start in range(0, frame.height, chunk):
                part = frame.slice(start, chunk)
                self.store.add_listings(batch, part, self.enrich(part))
            self.store.finish_batch(batch)
        except Exception as error:  # the page shows it; the server goes on
            self.store.finish_batch(batch, error=str(error).splitlines()[0] if str(error) else type(error).__name__)


def import_output(store: Store, name: str, listings: pl.DataFrame, output: pl.DataFrame, source: str) -> int:
    """A review batch made of `enrich run`'s output and the input it was made from, row for row."""
    if listings["id"].to_list() != output["id"].to_list():
        raise InputError(f"{source}: the output's ids are not the input's, row for row: was it made from this input?")
    batch = store.new_batch(name, source, listings.height)
    for start in range(0, listings.height, 5000):
        store.add_listings(batch, listings.slice(start, 5000), output.slice(start, 5000))
    store.finish_batch(batch)
    return batch
