"""`enrich serve`: the enrichment API and the review pages through FastAPI's test client, then the real server over
HTTP: a kill -9 while decisions are saved, and a bounded load. The workbench's pages are tested in test_workbench.py."""

import os
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from benchmarks.serve import start
from enrich.cli import main
from enrich.index.store import FORMAT
from enrich.serve.app import create_app, is_loopback
from enrich.serve.wire import BULK, INTERACTIVE
from enrich.serve.worker import BatchQueue, Job
from enrich.settings import ServeConfig

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tiny_index, sample_columns, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "review.sqlite"
    app = create_app(ServeConfig(index=str(tiny_index), db=str(db), token=TOKEN, columns=sample_columns,
                                 max_listings=20, max_request_bytes=200_000))
    with TestClient(app) as client:
        yield client


def test_the_api_enriches_listings_and_names_what_it_refuses(client):
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/v1/info").status_code == 401
    info = client.get("/v1/info", headers=AUTH).json()
    assert info["listings"] == 1000 and info["format"] == FORMAT
    answer = client.post("/v1/enrich", headers=AUTH, json={"listings": [
        {"id": "a", "title": "Wooden train set", "brand": "Brio", "description": ["engine", "three carriages"]},
        {"id": "b", "title": "Balloon pump", "category": "Party Supplies > Balloons"}]})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["listings"]
    assert [r["id"] for r in rows] == ["a", "b"] and all(r["status"] == "ok" for r in rows)
    assert len(rows[0]["neighbors"]) == 10 and rows[1]["category"] == "Party Supplies > Balloons"
    assert rows[0]["exposure_prior_low"] <= rows[0]["exposure_prior_high"]

    refused = client.post("/v1/enrich", headers=AUTH, json={"listings": [
        {"id": "a", "title": "Kite"}, {"id": "b", "title": "\u200b"}, {"id": "c", "title": "<b></b>"}]})
    assert refused.status_code == 422 and refused.json()["detail"] == [
        {"listing": 1, "id": "b", "error": "field 'title': empty title"},
        {"listing": 2, "id": "c", "error": "field 'title': empty title"}]
    repeated = client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": "a", "title": "Kite"}, {"id": "a", "title": "x"}]})
    assert repeated.status_code == 422 and repeated.json()["detail"] == [
        {"listing": 1, "id": "a", "error": "field 'id': duplicate id 'a' (first at listing 0)"}]
    malformed = client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": "a", "title": 3, "colour": "red"}]})
    assert malformed.status_code == 422 and {tuple(e["loc"]) for e in malformed.json()["detail"]} == {
        ("body", "listings", 0, "title"), ("body", "listings", 0, "colour")}
    many = client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": str(i), "title": "Kite"} for i in range(21)]})
    assert many.status_code == 422 and "at most 20" in many.text
    huge = client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": "a", "title": "x" * 300_000}]})
    assert huge.status_code == 413
    assert client.post("/v1/enrich", headers={**AUTH, "Content-Type": "application/json"}, content=b"{not json").status_code == 422
    assert client.post("/v1/enrich", headers=AUTH, content=b'{"listings": []}').status_code == 415  # not said to be JSON
    assert client.get("/openapi.json", headers=AUTH).json()["paths"].keys() >= {"/v1/enrich", "/v1/health", "/v1/info"}


def served(client) -> dict:
    return client.get("/v1/info", headers=AUTH).json()["served"]


def test_concurrent_requests_share_batches_and_get_what_they_would_alone(client):
    titles = [f"{colour} wooden toy train {i}" for i, colour in enumerate(["red", "blue", "green", "yellow"] * 6)]
    alone = [client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": str(i), "title": t}]}).json()["listings"][0]
             for i, t in enumerate(titles)]
    before = served(client)
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda it: client.post("/v1/enrich", headers=AUTH, json={
            "listings": [{"id": str(it[0]), "title": it[1]}]}).json()["listings"][0], enumerate(titles)))
    assert together == alone  # the same numbers whichever requests shared a batch
    after = served(client)
    assert after["listings"] - before["listings"] >= len(titles)
    assert after["batches"] - before["batches"] < len(titles) + 2  # some shared a batch (+2: the /v1/info calls)


def job(name: str, arrived: float, size: int = 1, op: str = "enrich", priority: int = INTERACTIVE) -> Job:
    return Job(None, 0, op, name, size, priority, arrived)


def test_requests_that_queued_while_the_models_were_busy_do_not_wait_again():
    """The batch queue's wait counts from a request's arrival: what queued during a batch goes in as soon as it ends.
    The clock is the test's: nothing here depends on how busy the machine is."""
    queue = BatchQueue(max_listings=100, wait_s=0.5)
    queue.put(job("a", arrived=0.0))
    assert queue.take(0.2) == [] and queue.due(0.2) == pytest.approx(0.3)  # the first waits for company
    assert [j.payload for j in queue.take(0.5)] == ["a"]  # ... until 0.5 s; then the models are busy until 1.3 s
    queue.put(job("b", arrived=0.6))
    queue.put(job("c", arrived=0.7))
    assert queue.due(1.3) == 0.0 and [j.payload for j in queue.take(1.3)] == ["b", "c"]  # their wait ended at 1.1 s
    assert queue.take(1.3) == [] and queue.due(1.3) is None


def test_interactive_work_goes_before_an_upload_and_batches_are_cut_at_their_size():
    queue = BatchQueue(max_listings=4, wait_s=0.01)
    queue.put(job("chunk", 0.0, size=4, op="frame", priority=BULK))
    queue.put(job("x", 0.1, size=3))
    queue.put(job("y", 0.1, size=2))
    queue.put(job("explain", 0.2, op="explain"))
    # x and y would exceed 4 listings: x goes alone at once (y waits behind it), then y, then the page's explain,
    # and only then the upload's chunk, which came first.
    assert [[j.payload for j in queue.take(0.2)] for _ in range(4)] == [["x"], ["y"], ["explain"], ["chunk"]]


def test_pages_need_the_token_and_forms_need_their_csrf_token(client):
    fresh = TestClient(client.app)
    assert fresh.get("/").status_code == 401
    assert fresh.get("/?token=wrong").status_code == 401
    response = fresh.get(f"/?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"  # the token leaves the address bar
    assert "httponly" in response.headers["set-cookie"].lower() and "samesite=strict" in response.headers["set-cookie"].lower()
    assert fresh.get("/").status_code == 200
    assert fresh.post("/v1/enrich", json={"listings": [{"id": "a", "title": "x"}]}).status_code == 401  # API: header only
    assert fresh.post("/reviewer", data={"name": "eve", "csrf": "forged"}).status_code == 403
    assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.1") and is_loopback("::1")


def test_a_batch_is_reviewed_in_the_pages_with_its_fields_escaped(client, sample, tmp_path):
    csrf = client.app.state.csrf
    client.get(f"/?token={TOKEN}")
    hostile = pl.read_csv(sample["new"], infer_schema=False).head(12).with_columns(
        # Entities decode to a real tag in the title: a seller's text can hold anything, and the page must escape it.
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("&lt;script&gt;alert(1)&lt;/script&gt; robot"))
        .otherwise(pl.col("product_name"))
        .alias("product_name"))
    hostile.write_csv(tmp_path / "upload.csv")
    client.cookies.set("enrich_reviewer", "ann")
    with open(tmp_path / "upload.csv", "rb") as handle:
        response = client.post("/batches", files={"file": ("../../etc/evil.csv", handle)}, data={"csrf": csrf, "name": "x"},
                               follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/uploads/")  # the mapping step
    response = client.post(response.headers["location"], data={"csrf": csrf, "step": "start"}, follow_redirects=False)
    assert response.status_code == 303
    batch = int(response.headers["location"].rsplit("/", 1)[1])
    for _ in range(100):
        if client.app.state.workbench.store.batch(batch)["state"] != "enriching":
            break
        time.sleep(0.1)
    assert client.app.state.workbench.store.batch(batch)["state"] == "ready"
    assert sorted(p.name for p in client.app.state.workbench.uploads.iterdir())[0] == f"batch-{batch}.csv"
    queue = client.get(f"/batches/{batch}?state=all")
    assert "<script>alert(1)</script>" not in queue.text and "&lt;script&gt;alert(1)&lt;/script&gt; robot" in queue.text
    listing = client.get(f"/batches/{batch}/listings/1")
    assert listing.status_code == 200 and "&lt;script&gt;" in listing.text and "<script>alert" not in listing.text
    known = sorted(client.app.state.workbench.known_paths)[0]
    decided = client.post(f"/batches/{batch}/listings/1", data={"csrf": csrf, "action": "type", "path": known},
                          follow_redirects=False)
    assert decided.status_code == 303 and "done=" in decided.headers["location"]
    store = client.app.state.workbench.store
    assert store.history(batch, hostile["uniq_id"][0])[-1]["after"] == known
    accepted = client.post(f"/batches/{batch}/bulk", data={"csrf": csrf, "kind": "accept", "view": "", "expected": 11},
                           follow_redirects=False)
    assert accepted.status_code == 303 and "op=" in accepted.headers["location"]  # the other eleven
    assert len([d for d in store.decisions()["action"] if d == "bulk"]) == 11
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE decisions SET after = 'x'")


def start_server(index: Path, db: Path, columns: Path) -> tuple[subprocess.Popen, str]:
    return start(index, db, "--columns", str(columns), token=TOKEN, wait_s=60)


@pytest.fixture
def review_batch(tiny_index, sample, sample_columns, tmp_path, capsys):
    """A review store holding the sample's new listings, enriched by `enrich run` and imported with `enrich review`."""
    code = main(["run", str(sample["new"]), "--index", str(tiny_index), "--out", str(tmp_path / "out.parquet"),
                 "--columns", str(sample["columns"]), "--quiet"])
    code += main(["review", "import", str(tmp_path / "out.parquet"), "--input", str(sample["new"]), "--db",
                  str(tmp_path / "review.sqlite"), "--columns", str(sample["columns"])])
    assert code == 0, capsys.readouterr().err
    return tmp_path / "review.sqlite"


def test_a_saved_decision_survives_a_kill_9_of_the_server(tiny_index, sample, review_batch):
    server, url = start_server(tiny_index, review_batch, sample["columns"])
    saved, stop = [], threading.Event()
    with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN, "enrich_reviewer": "ann"}) as http:
        csrf = __import__("hmac").new(TOKEN.encode(), b"csrf", "sha256").hexdigest()

        def decide():
            row = 1
            while not stop.is_set() and row <= 200:
                try:
                    answer = http.post(f"/batches/1/listings/{row}", data={"csrf": csrf, "action": "new",
                                                                           "path": f"Toys > Kept {row}"}, timeout=5)
                except httpx.HTTPError:
                    return  # the server is gone
                if answer.status_code == 303 and "done=" in answer.headers["location"]:
                    saved.append(f"Toys > Kept {row}")
                row += 1

        thread = threading.Thread(target=decide)
        thread.start()
        time.sleep(1.5)
        os.killpg(server.pid, signal.SIGKILL)  # at whatever moment the decisions are in
        stop.set()
        thread.join()
        server.wait()
    assert len(saved) >= 3
    with sqlite3.connect(review_batch) as db:
        stored = {row[0] for row in db.execute("SELECT after FROM decisions")}
    assert set(saved) <= stored  # every decision the server answered as saved is on disk


def test_a_bounded_load_loses_nothing(tiny_index, sample, review_batch):
    server, url = start_server(tiny_index, review_batch, sample["columns"])
    try:
        titles = pl.read_csv(sample["new"], infer_schema=False)["product_name"].to_list()
        csrf = __import__("hmac").new(TOKEN.encode(), b"csrf", "sha256").hexdigest()

        def call(i: int) -> int:
            with httpx.Client(base_url=url, headers=AUTH, cookies={"enrich_token": TOKEN, "enrich_reviewer": f"r{i % 3}"},
                              timeout=30) as http:
                if i % 4 == 0:
                    return http.post(f"/batches/1/listings/{i // 4 + 1}", data={"csrf": csrf, "action": "accept"}).status_code
                return http.post("/v1/enrich", json={"listings": [{"id": str(i), "title": titles[i % len(titles)]}]}).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(call, range(200)))
        assert time.perf_counter() - started < 120
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    assert set(codes) <= {200, 303} and codes.count(303) == 50, sorted(set(codes))
    with sqlite3.connect(review_batch) as db:
        assert db.execute("SELECT COUNT(DISTINCT listing) FROM decisions").fetchone()[0] == 50


def test_decisions_are_exported_for_the_learning_loop(review_batch, tmp_path, capsys):
    from enrich.serve.store import Store

    store = Store(review_batch)
    listing = store.listing(1, 1)
    store.decide(1, listing["id"], listing["category"], "Toys > Robots", "type", "ann", "queue")
    for out in ("decisions.csv", "decisions.parquet"):
        assert main(["review", "export", "--db", str(review_batch), "--out", str(tmp_path / out)]) == 0
    exported = pl.read_parquet(tmp_path / "decisions.parquet")
    assert exported.select("listing", "before", "after", "who", "source").row(0) == (
        listing["id"], listing["category"], "Toys > Robots", "ann", "queue")
    assert pl.read_csv(tmp_path / "decisions.csv").height == 1
