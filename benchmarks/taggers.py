"""Taggers fine-tuned for a benchmark split, cached under out/ by seed, settings and catalog, so that a rerun of
`make bench` or `make bench-promise` reuses them (a fine-tune takes about 10 minutes on 2 cores).

Each is trained on its split's reference part only: the held-out listings stay unseen. `python -m
benchmarks.taggers --seeds 0 1 2 3 4` trains the missing ones one at a time, each in its own process, so that on a
shared machine each can run under the heavy-job lock on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl

from benchmarks.common import AMAZON, DEFAULT_CATALOG, gpu_name
from enrich.catalog import load_catalog
from enrich.category.finetune import finetune
from enrich.category.tagger import Tagger
from enrich.evaluation.evaluate import split_catalog
from enrich.files import sha256, write_json
from enrich.settings import EvalConfig, FinetuneConfig

CACHE = Path("out") / "bench-taggers"
# The benchmarks' taggers: 2 epochs of titles cut at 32 tokens (99% of this catalog's are shorter than 45), so that
# five of them train in about 2 hours on 2 cores without AVX-512 (the defaults take about 2 hours each there).
BENCH_TAGGER = FinetuneConfig(epochs=2, max_length=32, validation_share=0.2)
FIGURES = "finetune.json"  # the fine-tune's metrics beside the tagger


def tagger_folder(catalog: Path, seed: int, config: FinetuneConfig, cache: Path = CACHE) -> Path:
    """Where the tagger of this split, these settings and this catalog's content lives."""
    settings = json.dumps(asdict(config), sort_keys=True) + sha256(Path(catalog))
    return cache / f"seed{seed}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def split_tagger(catalog: Path, reference: pl.DataFrame, seed: int, config: FinetuneConfig = FinetuneConfig(),
                 cache: Path = CACHE, progress: bool = True) -> tuple[Tagger, dict]:
    """The tagger fine-tuned on `reference` (the split of `seed`), from the cache or trained into it; its figures."""
    folder = tagger_folder(catalog, seed, config, cache)
    if not (folder / FIGURES).exists():
        folder.mkdir(parents=True, exist_ok=True)
        rows = pl.read_csv(catalog, infer_schema=False).filter(pl.col(AMAZON.id).is_in(reference["id"].implode()))
        rows.write_csv(folder / "reference.csv")
        metrics = finetune(folder / "reference.csv", folder / "tagger", AMAZON, config, progress=progress)
        metrics["listings_per_s"] = metrics["train_rows"] * metrics["epochs_run"] / metrics["seconds"]
        metrics["device"] = gpu_name() or "this CPU"
        write_json(folder / FIGURES, metrics)
    figures = json.loads((folder / FIGURES).read_text())
    tagger = Tagger.load(folder / "tagger")
    figures["settings"] = (f"all-MiniLM-L6-v2, {config.epochs} epochs max (patience {config.patience}), batch {config.batch_size},"
                           f" lr {config.learning_rate:g} body / {config.head_learning_rate:g} head, linear warm-up/decay,"
                           f" max {config.max_length} tokens, validation share {config.validation_share:g},"
                           f" mixed precision {tagger.info['mixed_precision']}")
    figures["cached"] = str(folder)
    return tagger, figures


def reference_part(catalog: Path, seed: int) -> pl.DataFrame:
    """The reference part (80%) of `make bench`'s split of `catalog` with `seed`."""
    reference, _ = split_catalog(load_catalog(catalog, AMAZON, reference=True), EvalConfig(seed=seed))
    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.taggers", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--validation-share", type=float, default=BENCH_TAGGER.validation_share)
    args = parser.parse_args(argv)
    config = replace(BENCH_TAGGER, validation_share=args.validation_share)
    for seed in args.seeds:
        _, figures = split_tagger(args.catalog, reference_part(args.catalog, seed), seed, config)
        print(f"seed {seed}: {figures['cached']}, {figures['seconds']:.0f} s, validation accuracy "
              f"{figures['validation_accuracy']:.3f} on {figures['validation_rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
