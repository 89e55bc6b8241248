"""`make bench-serve`: the real `enrich serve` over HTTP on this machine, against an index of the 8,000-listing Amazon
catalog, beside `enrich run`'s steady rate on the same new listings (a run of 2,000 less a run of 200), in one run:
single-listing `POST /v1/enrich` latency at concurrency 1, listings/s at concurrency 8 and 32, the API's latency
while an upload of 20,000 listings is enriched, and the review queue page of a 10,000-listing batch. With
`--before REV` (default: the commit before the model workers) the same is measured on that commit's server, checked
out with `git archive`, in the same run. The load comes from this process (`benchmarks.load`), so it shares the
cores with the server. Writes out/bench-serve.{md,json} and the serve section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl

from benchmarks.common import AMAZON, DEFAULT_CATALOG, ROOT, machine, missing
from benchmarks.docs import publish, update_section
from benchmarks.load import enrich_request, load, prepared
from benchmarks.scale import synthesize
from enrich.cli import main as enrich
from enrich.embed import Encoder, quiet_hugging_face

TOKEN = "bench-token-0123456789"
BEFORE = "b303b70"  # the last commit with the models in the HTTP process
FLAGS = ["--id-col", AMAZON.id, "--title-col", AMAZON.title, "--brand-col", AMAZON.brand, "--text-cols", "",
         "--category-col", AMAZON.category, "--engagement-col", AMAZON.engagement]
SAME, FEW, UPLOAD = 2_000, 200, 20_000  # enrich run's steady rate: a run of SAME less a run of FEW; the upload's size


def start(index: Path, db: Path, *flags: str, token: str = TOKEN, wait_s: float = 120, source: Path | None = None
          ) -> tuple[subprocess.Popen, str]:
    """`enrich serve` (from `source`, a checkout, if given) on a free loopback port in a process group of its own
    (stop it with os.killpg), once its health check answers; its stderr goes to DB.log, whose tail is the error if it
    exits before."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(f"{db}.log")
    with open(log, "wb") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "enrich", "serve", "--index", str(index), "--db", str(db),
                                   "--port", str(port), "--token", token, *flags], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=stderr, cwd=source, preexec_fn=die_with_parent)
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


def die_with_parent() -> None:
    """In the server's process before it starts: a SIGTERM when this process dies, so that a benchmark or a test
    killed midway leaves no server behind (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run_rate(folder: Path, index: Path, repeats: int = 2) -> dict:
    """`enrich run`'s steady rate on the new listings: (SAME - FEW) / (time of a run of SAME - time of a run of FEW),
    each the fastest of `repeats` runs in their own process (start-up and model loading cancel out)."""
    def seconds(name: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "enrich", "run", str(folder / name), "--index", str(index), "--out",
                        str(folder / f"{name}.parquet"), *FLAGS, "--quiet"], check=True)
        return time.perf_counter() - started
    times = {"same": [], "few": []}
    for _ in range(repeats):
        times["same"].append(seconds("same.csv"))
        times["few"].append(seconds("few.csv"))
    same, few = min(times["same"]), min(times["few"])
    return {"same_s": same, "few_s": few, "listings_per_s": (SAME - FEW) / (same - few)}


def info(url: str) -> dict:
    return httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).json()["served"]


def served_during(url: str, requests: list[bytes], concurrency: int) -> dict:
    """The load's result, with the CPU time this process (the load generator) spent and the listings per batch the
    models were handed meanwhile (from `/v1/info`)."""
    before, cpu, started = info(url), time.process_time(), time.perf_counter()
    result = asyncio.run(load(url, requests, concurrency))
    client_cores = (time.process_time() - cpu) / (time.perf_counter() - started)
    after = info(url)
    batches = after["batches"] - before["batches"]
    return result | {"client_cores": client_cores, "listings_per_batch": (after["listings"] - before["listings"]) / max(batches, 1)}


def queue_page(url: str, times: int = 20) -> dict:
    """The review queue's first page of the 10,000-listing batch, pending listings, then a filtered one."""
    out = {}
    with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN, "enrich_reviewer": "bench"}, timeout=60) as http:
        for name, path in (("pending", "/batches/1"), ("filtered", "/batches/1?state=all&min_score=0.2&max_score=0.6&q=car")):
            http.get(path)
            ms = []
            for _ in range(times):
                started = time.perf_counter()
                assert http.get(path).status_code == 200
                ms.append((time.perf_counter() - started) * 1000)
            out[name] = {"p50_ms": float(np.median(ms)), "max_ms": float(np.max(ms))}
    return out


def during_upload(url: str, db: Path, upload: Path, requests: list[bytes], window_s: float) -> dict:
    """An upload of `upload` through the page, then single-listing API requests one after another while it is
    enriched (or for `window_s` at most): their latency, and the upload's listings/s meanwhile."""
    csrf = hmac.new(TOKEN.encode(), b"csrf", "sha256").hexdigest()
    with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN}, timeout=120) as http, open(upload, "rb") as handle:
        answer = http.post("/batches", files={"file": ("upload.csv", handle)}, data={"csrf": csrf, "name": "upload"},
                           follow_redirects=False)
        if answer.headers.get("location", "").startswith("/uploads/"):  # the mapping step: the roles as guessed
            answer = http.post(answer.headers["location"], data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    batch = int(answer.headers["location"].rsplit("/", 1)[1])
    done = asyncio.Event()
    progress = {"started": time.perf_counter(), "enriched": 0, "state": "enriching"}

    def watch(loop):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as store:
            while time.perf_counter() - progress["started"] < window_s:
                progress["enriched"], progress["state"] = store.execute(
                    "SELECT enriched, state FROM batches WHERE id = ?", (batch,)).fetchone()
                progress["seconds"] = time.perf_counter() - progress["started"]
                if progress["state"] != "enriching":
                    break
                time.sleep(0.5)
        loop.call_soon_threadsafe(done.set)

    async def measure():
        watcher = threading.Thread(target=watch, args=(asyncio.get_running_loop(),))
        watcher.start()
        result = await load(url, requests * 20, 1, stop=done)
        await done.wait()
        watcher.join()
        return result
    result = asyncio.run(measure())
    return result | {"upload_listings": progress["enriched"], "upload_state": progress["state"],
                     "upload_listings_per_s": progress["enriched"] / progress["seconds"], "window_s": progress["seconds"]}


def measure_server(folder: Path, name: str, listings: list[dict], source: Path | None, window_s: float,
                   built: Path | None = None) -> dict:
    """The server of this checkout, or of `source` on what its own code `built` (its index and review store)."""
    built = built or folder
    db = folder / f"{name}.sqlite"
    shutil.copy(built / "review.sqlite", db)
    server, url = start(built / "index", db, *FLAGS, source=source, wait_s=300)
    host = url.removeprefix("http://")
    single = [enrich_request(host, TOKEN, [listing]) for listing in listings]
    tens = [enrich_request(host, TOKEN, listings[i:i + 10]) for i in range(0, len(listings), 10)]
    try:
        asyncio.run(load(url, single[:30], 1))  # warm-up: every shape's kernels built once
        results = {"single": asyncio.run(load(url, single[:300], 1)),
                   "c8": asyncio.run(load(url, single, 8)),
                   "c32": served_during(url, single + single[:1000], 32),
                   "c32_x10": asyncio.run(load(url, tens, 32, listings_per_request=10)),
                   "health_c32": asyncio.run(load(url, [prepared("GET", "/v1/health", host, {})] * 3000, 32)),
                   "queue_page": queue_page(url)}
        results["upload"] = during_upload(url, db, folder / "upload.csv", single, window_s)
    finally:
        stop(server)
    return results


def in_process(index: Path, listings: list[dict], sizes: tuple[int, ...] = (1, 8, 32, 64), repeats: int = 5) -> dict:
    """The models as a worker runs them, without HTTP: listings/s by how many single-listing requests are put through
    together, in this process with the servers stopped. What concurrency 32 could reach if HTTP cost nothing."""
    from enrich.run.models import Models, ModelSources
    from enrich.serve.worker import ModelWork

    work = ModelWork(Models(ModelSources(str(index))))
    out = {}
    for size in sizes:
        requests = [[listing] for listing in listings[:size]]
        work.enrich_requests(requests)  # every shape's kernels built once
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            work.enrich_requests(requests)
            seconds.append(time.perf_counter() - started)
        out[str(size)] = size / min(seconds)
    return out


def prepare(catalog: Path, folder: Path) -> list[dict]:
    """The index, the new listings (title and brand; no category, so every one is predicted), the 10,000-listing
    review batch for the queue page; the new listings as the API is sent them."""
    shutil.copy(catalog, folder / "catalog.csv")
    assert enrich(["index", str(catalog), "--out", str(folder / "index"), *FLAGS, "--quiet"]) == 0
    new = synthesize(catalog, UPLOAD, seed=5, prefix="n").with_columns(
        pl.lit(None, pl.String).alias(AMAZON.category)).drop(AMAZON.engagement)
    new.head(SAME).write_csv(folder / "same.csv")
    new.head(FEW).write_csv(folder / "few.csv")
    new.write_csv(folder / "upload.csv")
    batch = synthesize(catalog, 10_000, seed=3, prefix="b").drop("number_of_reviews")
    batch.write_csv(folder / "batch.csv")
    assert enrich(["run", str(folder / "batch.csv"), "--index", str(folder / "index"), "--out", str(folder / "batch.parquet"),
                   *FLAGS, "--quiet"]) == 0
    assert enrich(["review", "import", str(folder / "batch.parquet"), "--input", str(folder / "batch.csv"), "--db",
                   str(folder / "review.sqlite"), *FLAGS]) == 0
    return [{"id": row[AMAZON.id], "title": row[AMAZON.title], **({"brand": row[AMAZON.brand]} if row[AMAZON.brand] else {})}
            for row in new.head(SAME).iter_rows(named=True)]


def build_with(source: Path, folder: Path, built: Path) -> Path:
    """The index of the catalog and the 10,000-listing review batch, made by the code of the checkout at `source`."""
    built.mkdir()

    def command(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "enrich", *args, *FLAGS], cwd=source, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    command("index", str(folder / "catalog.csv"), "--out", str(built / "index"), "--quiet")
    command("run", str(folder / "batch.csv"), "--index", str(built / "index"), "--out", str(built / "batch.parquet"), "--quiet")
    command("review", "import", str(built / "batch.parquet"), "--input", str(folder / "batch.csv"), "--db",
            str(built / "review.sqlite"))
    return built


def benchmark(catalog: Path, folder: Path, before: str | None) -> dict:
    listings = prepare(catalog, folder)
    results = {"run": run_rate(folder, folder / "index"), "after": measure_server(folder, "after", listings, None, 600)}
    if before:
        source = folder / "before"
        source.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", before], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        built = build_with(source, folder, folder / "built-before")  # its index and store formats are its own
        results["before"] = measure_server(folder, "before", listings, source, 120, built) | {"commit": before}
    results["in_process"] = in_process(folder / "index", listings)
    return results


def to_markdown(r: dict) -> str:
    run = r["run"]["listings_per_s"]
    servers = [(f"before ({r['before']['commit']})", r["before"])] if "before" in r else []
    servers.append(("after", r["after"]))

    def row(what: str, cell, goal: str = "") -> str:
        return f"| {what} | " + " | ".join(cell(s) for _, s in servers) + f" | {goal} |"

    def rate(m: dict) -> str:
        return f"{m['listings_per_s']:.0f}/s ({m['p50_ms']:.0f} / {m['p99_ms']:.0f} ms)"

    calls = ("single", "c8", "c32", "c32_x10")
    return "\n".join([
        "| measure (the real server over HTTP, 8,000-listing index, no tagger) | "
        + " | ".join(name for name, _ in servers) + " | goal |", "|---|" + "---|" * len(servers) + "---|",
        row(f"`enrich run` on the same {SAME:,} new listings: steady rate (a run of {SAME:,} less a run of {FEW})",
            lambda s: f"{run:.0f}/s"),
        row("`POST /v1/enrich`, one listing, concurrency 1: p50 / p99",
            lambda s: f"{s['single']['p50_ms']:.0f} ms / **{s['single']['p99_ms']:.0f} ms**", "p99 < 100 ms"),
        row("concurrency 8, one listing each: listings/s (p50 / p99 latency)", lambda s: rate(s["c8"])),
        row("concurrency 32, one listing each: listings/s (p50 / p99 latency)", lambda s: f"**{rate(s['c32'])}**"),
        row("&nbsp;&nbsp;as a share of `enrich run`'s steady rate", lambda s: f"**{s['c32']['listings_per_s'] / run:.2f}**",
            ">= 0.80"),
        row("&nbsp;&nbsp;meanwhile: listings per batch through the models; cores the load generator used",
            lambda s: f"{s['c32']['listings_per_batch']:.1f}; {s['c32']['client_cores']:.2f}"),
        row("concurrency 32, 10 listings per request: listings/s (p50 / p99 latency)", lambda s: rate(s["c32_x10"])),
        row("`GET /v1/health` at concurrency 32, no enrichment: requests/s (the HTTP stack and the load generator)",
            lambda s: f"{s['health_c32']['requests_per_s']:.0f}/s"),
        row(f"while an upload of {UPLOAD:,} listings is enriched: `POST /v1/enrich`, one listing, concurrency 1: p50 / "
            "p99 (requests)", lambda s: f"{s['upload']['p50_ms']:.0f} ms / **{s['upload']['p99_ms']:.0f} ms** "
                                         f"({s['upload']['requests']})", "p99 < 500 ms"),
        row("&nbsp;&nbsp;meanwhile the upload: listings/s (listings enriched in the window, state at its end)",
            lambda s: f"{s['upload']['upload_listings_per_s']:.0f}/s ({s['upload']['upload_listings']:,} in "
                      f"{s['upload']['window_s']:.0f} s, {s['upload']['upload_state']})"),
        row("errors (any status but 200) over the requests above",
            lambda s: str(sum(s[k]["errors"] for k in (*calls, "upload")))
            + f" of {sum(s[k]['requests'] for k in (*calls, 'upload'))}", "0"),
        row("review queue of a 10,000-listing batch, first page: pending; filtered (p50, max of 20)",
            lambda s: f"{s['queue_page']['pending']['p50_ms']:.0f} ms, {s['queue_page']['pending']['max_ms']:.0f} ms; "
                      f"{s['queue_page']['filtered']['p50_ms']:.0f} ms, {s['queue_page']['filtered']['max_ms']:.0f} ms",
            "< 300 ms"),
        "| the models as a worker runs them, in one process, no HTTP: listings/s by how many single-listing requests "
        "go through together | " + " | ".join("" for _ in servers[:-1])
        + (" | " if len(servers) > 1 else "") + ", ".join(f"{n}: {v:.0f}/s" for n, v in r["in_process"].items()) + " | |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--before", default=BEFORE, help="a commit whose server is measured too ('' for none)")
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    quiet_hugging_face()
    if missing(args.catalog):
        return 2
    with tempfile.TemporaryDirectory(prefix="enrich-serve-") as tmp:
        results = benchmark(args.catalog, Path(tmp), args.before or None)
    table = to_markdown(results)
    publish(args.out, "bench-serve", results, table)
    if not args.no_docs:
        update_section("serve", table, "make bench-serve", machine(Encoder()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
