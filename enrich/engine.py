"""Where the heavy stages run: in this process (the default), or on Ray Data for catalogs that outgrow one machine.

With `--engine ray`, a stage hands `map_on_actors` blocks of rows and a callable class: Ray Data's `map_batches`
starts a pool of actors, each of which builds the class once (loading its models) and calls it on batches. The
engine imports no stage: embedding (in `enrich index`) and enrichment (in `enrich run`) give it their own classes.
Workers take a GPU each where the cluster has them, else `cpus_per_worker` cores each. Everything else (the hnswlib
build, the prior's fit, writing files) stays in the driver.

On a cluster, point `--ray-address` (or RAY_ADDRESS) at it; the index folder and the output must be on
storage every node can read, and enrich must be installed on the workers (or shipped with a runtime_env).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from enrich.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    name: str = "local"  # "local": in this process; "ray": Ray Data actors
    address: str = ""  # ray: a cluster's address ("auto", "ray://head:10001"); empty: RAY_ADDRESS, else a local instance
    workers: int = 0  # ray: actors; 0: one per GPU, else one per cpus_per_worker cores
    cpus_per_worker: int = 1  # ray: cores (and torch threads) per actor when there is no GPU

    def __post_init__(self):
        if self.name not in ("local", "ray"):
            raise ConfigError(f"unknown engine {self.name!r}: use 'local' or 'ray'")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


def _start_ray(engine: EngineConfig):
    try:
        import ray
    except ImportError as error:
        raise ConfigError("--engine ray needs Ray: pip install 'ray[data]'") from error
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


def actor_count(engine: EngineConfig) -> int:
    """How many actors `map_on_actors` will start: a caller sizes its blocks by it."""
    return _pool(_start_ray(engine), engine)["concurrency"]


def map_on_actors(blocks: list, actor: type, args: tuple, engine: EngineConfig) -> Iterator:
    """Each Arrow block through `actor(*args)` on a pool of Ray actors; the result tables, in input order. Each actor
    is built once; before that, torch in it is given the cores its actor is given."""
    ray = _start_ray(engine)
    pool = _pool(ray, engine)
    dataset = ray.data.from_arrow(blocks).map_batches(
        _Threads, fn_constructor_args=(actor, args, pool.get("num_cpus", 1)), batch_size=None, batch_format="pyarrow",
        **pool)
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


class _Threads:
    """An actor's callable, built after torch is told how many cores the actor has."""

    def __init__(self, actor: type, args: tuple, cpus: int):
        import torch

        torch.set_num_threads(max(1, cpus))
        self.call = actor(*args)

    def __call__(self, batch):
        return self.call(batch)
