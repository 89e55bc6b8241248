"""`make scale` (`python -m benchmarks.scale`): wall time, listings/s and peak memory of `enrich index`, `enrich index --update`
and `enrich run` on synthetic catalogs made by recombining real titles, brands and review counts.

Each command runs as a user runs it, in its own process (model load included); peak memory is that
process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import AMAZON, AMAZON_COLUMNS, DEFAULT_CATALOG
from benchmarks.docs import publish

# Runs the CLI in this process and reports its own peak memory on the last line of stderr.
_MEASURED = ("import resource, sys; from enrich.cli import main; code = main(sys.argv[1:]); "
             "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def synthesize(catalog: Path, n: int, seed: int, prefix: str) -> pl.DataFrame:
    """n listings: a real title with words of another, a third listing's brand, a fourth's review count."""
    real = pl.read_csv(catalog, infer_schema=False).select(AMAZON_COLUMNS).drop_nulls("product_name")
    rng = np.random.default_rng(seed)
    a, b, c, d = (rng.integers(0, real.height, n) for _ in range(4))
    tails = real["product_name"].str.split(" ").list.slice(0, 4).list.join(" ")
    return pl.DataFrame({
        "uniq_id": [f"{prefix}{i}" for i in range(n)],
        "product_name": (real["product_name"][a] + " " + tails[b]).to_list(),
        "manufacturer": real["manufacturer"][c].to_list(),
        "amazon_category_and_sub_category": real["amazon_category_and_sub_category"][a].to_list(),
        "number_of_reviews": real["number_of_reviews"][d].to_list(),
    })


def measured(args: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"enrich {' '.join(args)} failed: {done.stderr[-2000:]}")
    peak = int(done.stderr.strip().splitlines()[-1].split()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1024)}


def scale(catalog: Path, sizes: list[int], new_listings: int, added: int, index_only: bool = False) -> list[dict]:
    flags = ["--id-col", AMAZON.id, "--title-col", AMAZON.title, "--brand-col", AMAZON.brand, "--text-cols", "",
             "--category-col", AMAZON.category, "--engagement-col", AMAZON.engagement, "--quiet"]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            reference = synthesize(catalog, n, seed=n, prefix="r")
            reference.write_csv(folder / "reference.csv")
            build = measured(["index", str(folder / "reference.csv"), "--out", str(folder / "index"), *flags])
            build["listings_per_s"] = round(n / build["seconds"])
            if index_only:
                rows.append({"reference": n, "index": build})
                print(json.dumps(rows[-1]), flush=True)
                continue
            pl.concat([reference, synthesize(catalog, added, seed=n + 1, prefix="a")]).write_csv(folder / "updated.csv")
            update = measured(["index", str(folder / "updated.csv"), "--out", str(folder / "index"), "--update", *flags])
            synthesize(catalog, new_listings, seed=n + 2, prefix="n").drop("number_of_reviews").write_csv(folder / "new.csv")
            run = measured(["run", str(folder / "new.csv"), "--index", str(folder / "index"), "--out", str(folder / "out.parquet"), *flags])
        row = {"reference": n, "index": build, "update": {**update, "added": added}, "run": {**run, "listings": new_listings}}
        row["run"]["listings_per_s"] = round(new_listings / run["seconds"])
        row["update_share_of_rebuild"] = round(update["seconds"] / build["seconds"], 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| reference listings | `enrich index`: s, listings/s, peak MB | `--update` (+added): s, share of rebuild, peak MB |"
             " `enrich run` (new): s, listings/s, peak MB |", "|---|---|---|---|"]
    for r in rows:
        i = r["index"]
        if "run" not in r:  # --index-only
            lines.append(f"| {r['reference']:,} | {i['seconds']} s, {i['listings_per_s']}/s, {i['peak_rss_mb']} MB | | |")
            continue
        u, n = r["update"], r["run"]
        lines.append(f"| {r['reference']:,} | {i['seconds']} s, {i['listings_per_s']}/s, {i['peak_rss_mb']} MB | "
                     f"+{u['added']:,}: {u['seconds']} s, {r['update_share_of_rebuild']:.1%}, {u['peak_rss_mb']} MB | "
                     f"{n['listings']:,}: {n['seconds']} s, {n['listings_per_s']}/s, {n['peak_rss_mb']} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--sizes", default="10000,100000", help="reference sizes, comma-separated")
    parser.add_argument("--new", type=int, default=10_000, help="new listings enriched per size")
    parser.add_argument("--added", type=int, default=1_000, help="listings added by --update per size")
    parser.add_argument("--index-only", action="store_true", help="measure `enrich index` only (the 1M row)")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    rows = scale(args.catalog, [int(s) for s in args.sizes.split(",")], args.new, args.added, args.index_only)
    publish(args.out, "scale-index" if args.index_only else "scale", rows, to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
