"""`make bench-serve`: the real `enrich serve` over HTTP on this machine, against an index of the 8,000-listing
Amazon catalog: single-listing `POST /v1/enrich` latency at concurrency 1, listings/s at concurrency 8 and 32, and
the review queue page of a 10,000-listing batch. The load comes from this process (asyncio, httpx), so on a small
machine it shares the cores with the server. Writes out/bench-serve.{md,json} and the serve section of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl

from benchmarks.common import AMAZON, AMAZON_COLUMNS, DEFAULT_CATALOG, machine
from benchmarks.docs import publish, update_section
from benchmarks.scale import synthesize
from enrich.cli import main as enrich
from enrich.embed import Encoder, quiet_hugging_face
from enrich.serve.workbench import Workbench
from enrich.settings import ServeConfig

TOKEN = "bench-token"
FLAGS = ["--id-col", AMAZON.id, "--title-col", AMAZON.title, "--brand-col", AMAZON.brand, "--text-cols", "",
         "--category-col", AMAZON.category, "--engagement-col", AMAZON.engagement]


def start(index: Path, db: Path, *flags: str, token: str = TOKEN, wait_s: float = 120) -> tuple[subprocess.Popen, str]:
    """`enrich serve` on a free loopback port in a process group of its own (stop it with os.killpg), once its health
    check answers; its stderr goes to DB.log, whose tail is the error if it exits before."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(f"{db}.log")
    with open(log, "wb") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "enrich", "serve", "--index", str(index), "--db", str(db),
                                   "--port", str(port), "--token", token, *flags], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace")[-2000:])
    raise RuntimeError("the server did not start")


async def load(url: str, titles: list[str], concurrency: int, requests: int, per_request: int = 1, path: str = "/v1/enrich") -> dict:
    """`requests` POSTs of `per_request` listings each (GETs of `path` when it is not the API's), `concurrency` in
    flight at once: latencies, requests/s and listings/s."""
    latencies, errors = [], 0
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, limits=limits) as http:
        async def worker():
            nonlocal errors
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                if path != "/v1/enrich":
                    answer = await http.get(path)
                else:
                    answer = await http.post(path, json={"listings": [{"id": f"{i}-{j}", "title": titles[(i * per_request + j) % len(titles)]}
                                                                      for j in range(per_request)]})
                latencies.append(time.perf_counter() - started)
                errors += answer.status_code != 200
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "errors": errors, "requests_per_s": requests / seconds,
            "listings_per_s": requests * per_request / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def served_during(url: str, run) -> dict:
    """`run()`'s result, with the CPU time this process (the load generator) spent and the listings per batch the
    server's batcher put through the models meanwhile (from `/v1/info`)."""
    def served():
        return httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()["served"]
    before, cpu, started = served(), time.process_time(), time.perf_counter()
    result = run()
    client_cores = (time.process_time() - cpu) / (time.perf_counter() - started)
    after = served()
    batches = after["batches"] - before["batches"]
    return result | {"client_cores": client_cores, "listings_per_batch": (after["listings"] - before["listings"]) / max(batches, 1)}


def queue_page(url: str, times: int = 20) -> dict:
    """The review queue's first page of the 10,000-listing batch, pending listings, then a filtered one."""
    out = {}
    with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN}, timeout=60) as http:
        for name, path in (("pending", "/batches/1"), ("filtered", "/batches/1?state=all&min_score=0.2&max_score=0.6&q=car")):
            http.get(path)
            ms = []
            for _ in range(times):
                started = time.perf_counter()
                assert http.get(path).status_code == 200
                ms.append((time.perf_counter() - started) * 1000)
            out[name] = {"p50_ms": float(np.median(ms)), "max_ms": float(np.max(ms))}
    return out


def benchmark(catalog: Path, folder: Path) -> dict:
    assert enrich(["index", str(catalog), "--out", str(folder / "index"), *FLAGS, "--quiet"]) == 0
    batch = synthesize(catalog, 10_000, seed=3, prefix="b").drop("number_of_reviews")
    batch.write_csv(folder / "batch.csv")
    assert enrich(["run", str(folder / "batch.csv"), "--index", str(folder / "index"), "--out", str(folder / "batch.parquet"),
                   *FLAGS, "--quiet"]) == 0
    assert enrich(["review", "import", str(folder / "batch.parquet"), "--input", str(folder / "batch.csv"), "--db",
                   str(folder / "review.sqlite"), *FLAGS]) == 0
    titles = pl.read_csv(catalog, infer_schema=False).select(AMAZON_COLUMNS)["product_name"].drop_nulls().to_list()
    server, url = start(folder / "index", folder / "review.sqlite")
    try:
        asyncio.run(load(url, titles, 1, 30))  # warm-up: every shape's kernels built once
        results = {"single": asyncio.run(load(url, titles, 1, 300)),
                   "c8": asyncio.run(load(url, titles, 8, 2000)),
                   "c32": served_during(url, lambda: asyncio.run(load(url, titles, 32, 3000))),
                   "c32_x10": asyncio.run(load(url, titles, 32, 500, per_request=10)),
                   "health_c32": asyncio.run(load(url, titles, 32, 3000, path="/v1/health")),
                   "queue_page": queue_page(url)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    results["in_process"] = in_process(folder / "index", folder / "in-process.sqlite", titles)
    return results


def in_process(index: Path, db: Path, titles: list[str], sizes: tuple[int, ...] = (1, 8, 32, 320), repeats: int = 5) -> dict:
    """The server's models without HTTP: batches of single-listing requests as the batcher hands them over, timed in
    this process with the server stopped. What concurrency 32 could reach if HTTP and the client cost nothing."""
    bench = Workbench(ServeConfig(index=index, db=db))
    out = {}
    for size in sizes:
        requests = [[{"id": f"p{i}", "title": title}] for i, title in enumerate(titles[:size])]
        bench.enrich_requests(requests)  # every shape's kernels built once
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            bench.enrich_requests(requests)
            seconds.append(time.perf_counter() - started)
        out[str(size)] = size / min(seconds)
    return out


def to_markdown(r: dict) -> str:
    s, c8, c32, page = r["single"], r["c8"], r["c32"], r["queue_page"]
    return "\n".join([
        "| measure (the real server over HTTP, 8,000-listing index, no tagger) | enrich serve | goal |", "|---|---|---|",
        f"| `POST /v1/enrich`, one listing, concurrency 1: p50 / p99 | {s['p50_ms']:.0f} ms / **{s['p99_ms']:.0f} ms** | p99 < 100 ms |",
        f"| concurrency 8: listings/s (p50 / p99 latency) | {c8['listings_per_s']:.0f}/s ({c8['p50_ms']:.0f} / {c8['p99_ms']:.0f} ms) | |",
        f"| concurrency 32: listings/s (p50 / p99 latency) | **{c32['listings_per_s']:.0f}/s** ({c32['p50_ms']:.0f} / {c32['p99_ms']:.0f} ms) | >= 300/s |",
        f"| &nbsp;&nbsp;meanwhile: listings per batch through the models; cores the load generator used | "
        f"{c32['listings_per_batch']:.1f}; {c32['client_cores']:.2f} | |",
        f"| the same server answering `GET /v1/health` at concurrency 32, no enrichment: requests/s (the HTTP stack and this "
        f"load generator on the same cores) | {r['health_c32']['requests_per_s']:.0f}/s | |",
        f"| concurrency 32, 10 listings per request: listings/s (p50 / p99 latency) | {r['c32_x10']['listings_per_s']:.0f}/s "
        f"({r['c32_x10']['p50_ms']:.0f} / {r['c32_x10']['p99_ms']:.0f} ms) | |",
        "| the same models in one process, no HTTP: listings/s by how many single-listing requests the batcher hands "
        f"over at once | {', '.join(f'{n}: {v:.0f}/s' for n, v in r['in_process'].items())} | |",
        f"| errors over {sum(r[k]['requests'] for k in ('single', 'c8', 'c32', 'c32_x10'))} requests | "
        f"{sum(r[k]['errors'] for k in ('single', 'c8', 'c32', 'c32_x10'))} | 0 |",
        f"| review queue of a 10,000-listing batch, first page: pending; filtered (p50, max of 20) | "
        f"{page['pending']['p50_ms']:.0f} ms, {page['pending']['max_ms']:.0f} ms; {page['filtered']['p50_ms']:.0f} ms, "
        f"{page['filtered']['max_ms']:.0f} ms | < 300 ms |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    quiet_hugging_face()
    if not args.catalog.exists():
        print(f"bench: {args.catalog} not found (the shared data folder is needed for the benchmark)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="enrich-serve-") as tmp:
        results = benchmark(args.catalog, Path(tmp))
    table = to_markdown(results)
    publish(args.out, "bench-serve", results, table)
    if not args.no_docs:
        update_section("serve", table, "make bench-serve", machine(Encoder()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
