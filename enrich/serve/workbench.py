"""What an HTTP process of the server holds: the review store, the client of the model workers (the index and models
are loaded in their own processes, see `worker.py`), and the uploads' background jobs.

An upload is enriched a chunk at a time through the models' queue at upload priority, so that the API and the pages
go first. While a job works on a batch it holds the batch's lock (a file lock, released by the system if the process
dies): at start-up, a batch left "enriching" whose lock is free was interrupted, and is marked so; it can be resumed
from its kept file, skipping the rows already stored.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from enrich.catalog import load_catalog
from enrich.errors import InputError
from enrich.files import OutputError, exclusive_lock
from enrich.run.explain import Explanation
from enrich.run.models import Models, ModelSources
from enrich.serve.conflicts import Conflict
from enrich.serve.pool import ModelClient, ModelsUnavailable, Refused  # noqa: F401  (Refused: re-exported for callers)
from enrich.serve.store import Store
from enrich.serve.wire import BULK, bytes_frame, frame_bytes
from enrich.settings import ServeConfig

CHUNK_TRIES = 5  # an upload's chunk is tried again while the models' process is started again after a crash
# An upload's chunk cannot be interrupted once the models start it: small chunks keep the API's wait behind one short.
UPLOAD_CHUNK_LISTINGS = 16


class Workbench:
    """The review store, the models (through their workers) and the work the server does with them."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.store = Store(config.db)
        self.sources = ModelSources(config.index, config.model)
        self.cleaning = self.sources.config.cleaning
        self.uploads = Path(config.uploads or Path(config.db).resolve().parent / "enrich-uploads")
        self.client: ModelClient | None = None
        self.summary: dict = {"known_paths": [], "info": {}}
        self._models: Models | None = None
        self._conflicts: list[Conflict] | None = None
        self.jobs: dict[int, threading.Event] = {}  # running uploads: their stop signals
        self.started = time.time()

    async def connect(self, client: ModelClient) -> None:
        """Use `client`'s model workers; what they serve is read once."""
        self.client = client
        _, body = await client.call("summary")
        self.summary = json.loads(body)

    # -- what the pages read --------------------------------------------------------------------------------------
    @property
    def known_paths(self) -> list[str]:
        return self.summary["known_paths"]

    def info(self) -> dict:
        return dict(self.summary["info"])

    @property
    def index(self):
        """The index, loaded in this process only if something here reads it (the models' work is in the workers)."""
        return self._local_models().index

    @property
    def tagger(self):
        return self._local_models().tagger

    def _local_models(self) -> Models:
        if self._models is None:
            self._models = Models(self.sources)
        return self._models

    # -- work for the models (synchronous: for page handlers and jobs, which run in threads) ----------------------
    def enrich(self, frame: pl.DataFrame, priority: int = BULK) -> pl.DataFrame:
        """The output rows of a standard frame."""
        _, body = self.client.call_sync("frame", frame_bytes(frame), frame.height, priority)
        return bytes_frame(body)

    def explain(self, listing: dict) -> Explanation:
        """Why a stored listing (`Store.listing`) got its category, tags, neighbours and prior."""
        _, body = self.client.call_sync("explain", json.dumps(listing, default=str).encode())
        return Explanation(**json.loads(body))

    def conflicts(self) -> list[Conflict]:
        if self._conflicts is None:  # once per process: the index does not change under it
            _, body = self.client.call_sync("conflicts")
            self._conflicts = [Conflict(**c) for c in json.loads(body)]
        return self._conflicts

    # -- batches ----------------------------------------------------------------------------------------------------
    def import_output(self, name: str, listings: pl.DataFrame, output: pl.DataFrame, source: str) -> int:
        """A batch from `enrich run`'s output and its input (standard frame); the ids must line up row for row."""
        return import_output(self.store, name, listings, output, source)

    def import_upload(self, batch: int, path: Path, chunk: int | None = None) -> None:
        """Enrich an uploaded catalog into `batch`, a chunk at a time (run in a background thread); the rows already
        stored (by a server that was killed) are skipped."""
        stop = self.jobs.setdefault(batch, threading.Event())
        try:
            with batch_lock(self.store, batch):
                self._import(batch, Path(path), stop, chunk or min(self.config.batch_listings, UPLOAD_CHUNK_LISTINGS))
        except OutputError:  # another process holds the batch: it is working on it
            pass
        except ModelsUnavailable:
            self.store.mark_interrupted(batch)
        except Exception as error:  # the page shows it; the server goes on
            self.store.finish_batch(batch, error=str(error).splitlines()[0] if str(error) else type(error).__name__)
        finally:
            self.jobs.pop(batch, None)

    def _import(self, batch: int, path: Path, stop: threading.Event, chunk: int) -> None:
        columns = self.store.batch_columns(batch) or self.config.columns  # as the upload's mapping step chose
        frame = load_catalog(path, columns, self.cleaning)
        self.store.set_rows(batch, frame.height)
        stored = self.store.stored_rows(batch)
        if stored:
            frame = frame.filter(~pl.col("row").is_in(sorted(stored)))
        for start in range(0, frame.height, chunk):
            if stop.is_set():  # the server is stopping: the batch is resumed from here
                self.store.mark_interrupted(batch)
                return
            part = frame.slice(start, chunk)
            self.store.add_listings(batch, part, self._enrich_chunk(part))
        self.store.finish_batch(batch)

    def _enrich_chunk(self, part: pl.DataFrame) -> pl.DataFrame:
        for attempt in range(CHUNK_TRIES):
            try:
                return self.enrich(part, BULK)
            except ModelsUnavailable:
                if attempt == CHUNK_TRIES - 1:
                    raise
                time.sleep(2.0)

    def resume_upload(self, batch: int) -> bool:
        """Resume an interrupted upload from its kept file in the background; False when the batch is not an
        interrupted upload whose file is kept."""
        kept = self.kept_upload(batch)
        if kept is None or not self.store.resume_batch(batch):
            return False
        threading.Thread(target=self.import_upload, args=(batch, kept), daemon=True).start()
        return True

    def kept_upload(self, batch: int) -> Path | None:
        found = sorted(self.uploads.glob(f"batch-{batch}.*"))
        return found[0] if found else None

    def mark_interrupted(self) -> list[int]:
        """Batches left "enriching" that no process is working on (their lock is free): marked interrupted."""
        marked = []
        for batch in self.store.batches_in_state("enriching"):
            try:
                with batch_lock(self.store, batch):
                    if self.store.mark_interrupted(batch):
                        marked.append(batch)
            except OutputError:
                continue  # held: a job of this server or of another replica is working on it
        return marked

    def stop_jobs(self) -> None:
        """Ask the running uploads to stop after their chunk; each marks its batch interrupted."""
        for stop in list(self.jobs.values()):
            stop.set()


@contextmanager
def batch_lock(store: Store, batch: int):
    """The lock a process holds while it writes a batch (`.NAME.batch-N.lock` beside the store)."""
    with exclusive_lock(store.path.parent / f"{store.path.name}.batch-{batch}", f"batch {batch}"):
        yield


def import_output(store: Store, name: str, listings: pl.DataFrame, output: pl.DataFrame, source: str) -> int:
    """A review batch made of `enrich run`'s output and the input it was made from, row for row."""
    if listings["id"].to_list() != output["id"].to_list():
        raise InputError(f"{source}: the output's ids are not the input's, row for row: was it made from this input?")
    batch = store.new_batch(name, source, listings.height)
    with batch_lock(store, batch):
        for start in range(0, listings.height, 5000):
            store.add_listings(batch, listings.slice(start, 5000), output.slice(start, 5000))
        store.finish_batch(batch)
    return batch
