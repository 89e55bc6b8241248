"""Where the heavy stages run: in this process (the default), or on Ray Data for catalogs that outgrow one machine.

With `--engine ray`, embedding (in `enrich index`) and enrichment (in `enrich run`) go through Ray Data's
`map_batches` with a pool of actors, each of which loads its model once: the encoder, or the index, the
tagger and the LLM stage. Workers take a GPU each where the cluster has them, else `cpus_per_worker`
cores each. Everything else (the hnswlib build, the prior's fit, writing files) stays in the driver.

On a cluster, point `--ray-address` (or RAY_ADDRESS) at it; the index folder and the output must be on
storage every node can read, and enrich must be installed on the workers (or shipped with a runtime_env).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from enrich.catalog import CatalogError
from enrich.category.tagger import Tagger
from enrich.embed import Encoder
from enrich.index.store import ReferenceIndex, encoder_for
from enrich.llm.describe import Describer
from enrich.run.score import enrich_part

PART_COLUMN = "_part"


@dataclass(frozen=True)
class EngineConfig:
    name: str = "local"  # "local": in this process; "ray": Ray Data actors
    address: str = ""  # ray: a cluster's address ("auto", "ray://head:10001"); empty: RAY_ADDRESS, else a local instance
    workers: int = 0  # ray: actors; 0: one per GPU, else one per cpus_per_worker cores
    cpus_per_worker: int = 1  # ray: cores (and torch threads) per actor when there is no GPU

    def __post_init__(self):
        if self.name not in ("local", "ray"):
            raise CatalogError(f"unknown engine {self.name!r}: use 'local' or 'ray'")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


def _start_ray(engine: EngineConfig):
    try:
        import ray
    except ImportError as error:
        raise CatalogError("--engine ray needs Ray: pip install 'ray[data]'") from error
    if not ray.is_initialized():
        address = engine.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # results come back in input order
    context.enable_progress_bars = False
    return ray


def _pool(ray, engine: EngineConfig) -> dict:
    """map_batches arguments for the actor pool: one model per actor, a GPU each where there are GPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"concurrency": engine.workers or gpus, "num_gpus": 1}
    workers = engine.workers or max(1, int(resources.get("CPU", 1)) // engine.cpus_per_worker)
    return {"concurrency": workers, "num_cpus": engine.cpus_per_worker}


def _set_threads(cpus: int) -> None:
    import torch

    torch.set_num_threads(max(1, cpus))


class _Embedder:
    """A Ray actor: one encoder, vectors for batches of texts."""

    def __init__(self, encoder_config, cpus: int):
        _set_threads(cpus)
        self.encoder = Encoder(encoder_config)

    def __call__(self, batch):
        import pyarrow as pa

        vectors = self.encoder.encode(batch.column("text").to_pylist())
        return pa.table({"row": batch.column("row"), "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), vectors.shape[1])})


def embed_with_ray(texts: list[str], encoder_config, engine: EngineConfig, max_batch_rows: int = 4096) -> np.ndarray:
    """The encoder over texts on Ray Data actors; vectors in the order of texts."""
    import pyarrow as pa

    ray = _start_ray(engine)
    pool = _pool(ray, engine)
    # At least four batches per actor, so that every actor has work and a slow one holds nothing up.
    batch_rows = int(min(max_batch_rows, max(64, -(-len(texts) // (4 * pool["concurrency"])))))
    blocks = [pa.table({"row": np.arange(start, min(start + batch_rows, len(texts))),
                        "text": texts[start: start + batch_rows]}) for start in range(0, len(texts), batch_rows)]
    dataset = ray.data.from_arrow(blocks).map_batches(
        _Embedder, fn_constructor_args=(encoder_config, pool.get("num_cpus", 1)), batch_size=None,
        batch_format="pyarrow", **pool)
    out = None
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.column("row").to_numpy()
        vectors = np.stack(batch.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), np.float32)
        out[rows] = vectors
    return out if out is not None else np.zeros((0, 0), np.float32)


class _Enricher:
    """A Ray actor: the index, the encoder, the tagger and the LLM stage loaded once; parts of new listings in."""

    def __init__(self, index_dir: str, config, tagger_dir: str | None, describe_config, cpus: int):
        _set_threads(cpus)
        self.encoder = encoder_for(index_dir)
        self.index = ReferenceIndex.load(index_dir, self.encoder)
        self.config = config
        self.tagger = Tagger.load(tagger_dir) if tagger_dir else None
        self.describer = None
        if describe_config is not None:
            self.describer = Describer(describe_config, self.encoder)

    def __call__(self, batch):
        frame = pl.from_arrow(batch)
        parts = frame[PART_COLUMN]
        out = enrich_part(frame.drop(PART_COLUMN), self.index, self.encoder, self.config, self.tagger, self.describer)
        return out.with_columns(parts).to_arrow()


def enrich_parts_with_ray(chunks: dict[int, pl.DataFrame], index_dir: Path, config, tagger_dir, describe_config,
                          engine: EngineConfig) -> Iterator[tuple[int, pl.DataFrame]]:
    """Enrich each pending part on the actor pool; yield (part number, output) as each part completes, in order."""
    ray = _start_ray(engine)
    pool = _pool(ray, engine)
    blocks = [chunk.with_columns(pl.lit(number, pl.Int64).alias(PART_COLUMN)).to_arrow()
              for number, chunk in sorted(chunks.items())]
    dataset = ray.data.from_arrow(blocks).map_batches(
        _Enricher, fn_constructor_args=(str(index_dir), config, str(tagger_dir) if tagger_dir else None,
                                        describe_config, pool.get("num_cpus", 1)),
        batch_size=None, batch_format="pyarrow", **pool)
    pending: dict[int, list[pl.DataFrame]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        frame = pl.from_arrow(batch)
        for number in frame[PART_COLUMN].unique(maintain_order=True).to_list():
            pending.setdefault(number, []).append(frame.filter(pl.col(PART_COLUMN) == number).drop(PART_COLUMN))
            done = pl.concat(pending[number])
            if done.height == chunks[number].height:
                del pending[number]
                yield number, done
