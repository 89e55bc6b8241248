"""`enrich serve` against an attacker and a careless operator, on loopback: bodies past the limits (chunked, slow),
headers that never end, odd credentials, redirects off-site, values JSON cannot carry, a server or its models killed
mid-work. Each ends in a 4xx (or a 503 to try again) with a message, never a 500, and nothing stuck or left behind."""

import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import pytest
from fastapi.testclient import TestClient

from benchmarks.serve import start, stop
from enrich.cli import main
from enrich.serve.app import create_app
from enrich.serve.security import derived, local_path
from enrich.settings import ServeConfig

TOKEN = "hostile-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
README = Path(__file__).resolve().parents[1] / "README.md"
LIMITS = ["--max-request-bytes", "100000", "--max-upload-bytes", "200000", "--header-timeout-s", "1",
          "--body-timeout-s", "1", "--min-body-rate", "1000000", "--max-connections", "24", "--batch-listings", "8"]


@pytest.fixture(scope="module")
def client(tiny_index, sample_columns, tmp_path_factory):
    db = tmp_path_factory.mktemp("hostile") / "review.sqlite"
    app = create_app(ServeConfig(index=str(tiny_index), db=str(db), token=TOKEN, columns=sample_columns,
                                 max_listings=20, max_request_bytes=100_000, max_upload_bytes=200_000))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def server(tiny_index, sample, tmp_path_factory):
    """The real server (uvicorn, the model worker process) with small limits and short timeouts."""
    folder = tmp_path_factory.mktemp("hostile-server")
    process, url = start(tiny_index, folder / "review.sqlite", "--columns", str(sample["columns"]), *LIMITS, token=TOKEN,
                         wait_s=120)
    yield url, folder, process
    stop(process)


def exchange(url: str, data: bytes, keep_sending: bytes = b"", seconds: float = 5.0) -> tuple[bytes, float]:
    """Send `data` on a raw connection, then `keep_sending` over and over until the server answers; what it answered
    (until it closed or `seconds` passed) and when."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=seconds) as sock:
        sock.sendall(data)
        answer = b""
        while time.monotonic() - started < seconds:
            if keep_sending and not select.select([sock], [], [], 0)[0]:
                try:
                    sock.sendall(keep_sending)
                except OSError:
                    keep_sending = b""
                continue
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def headers(url: str, method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}".encode()


# -- limits on what actually arrives -----------------------------------------------------------------------------
def test_a_chunked_body_past_the_limit_is_refused_as_it_streams(server):
    url, *_ = server
    request = headers(url, "POST", "/v1/enrich", "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    answer, seconds = exchange(url, request, keep_sending=chunk)
    assert status(answer) == 413 and b"over 100000 bytes" in answer and seconds < 5


def test_a_chunked_upload_past_the_limit_leaves_no_file_and_no_batch(server):
    url, folder, _ = server
    boundary = "b0undary"
    csrf = derived(TOKEN, b"csrf")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\r\nuniq_id,product_name\r\n").encode()
    body = head
    request = headers(url, "POST", "/batches", f"Cookie: enrich_token={TOKEN}\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")
    request += f"{len(body):x}\r\n".encode() + body + b"\r\n"
    rows = b"".join(b"%d,a toy %d\r\n" % (i, i) for i in range(2000))
    answer, _ = exchange(url, request, keep_sending=f"{len(rows):x}\r\n".encode() + rows + b"\r\n")
    assert status(answer) == 413
    uploads = folder / "enrich-uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    with sqlite3.connect(folder / "review.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0


def test_a_declared_length_past_the_limit_is_refused_before_the_body(server):
    url, *_ = server
    answer, seconds = exchange(url, headers(url, "POST", "/v1/enrich", "Content-Length: 500000000\r\n\r\n"))
    assert status(answer) == 413 and seconds < 5


def test_headers_and_bodies_that_trickle_are_cut_off(server):
    url, *_ = server
    started_headers, seconds = exchange(url, b"POST /v1/enrich HTTP/1.1\r\nHost: x\r\n", seconds=10)
    assert status(started_headers) == 408 and seconds < 5  # --header-timeout-s 1
    silent, seconds = exchange(url, b"", seconds=10)  # a connection that never says anything
    assert status(silent) == 408 and seconds < 5
    slow_body, seconds = exchange(url, headers(url, "POST", "/v1/enrich", "Content-Type: application/json\r\n"
                                                                          "Content-Length: 1000\r\n\r\n{"), seconds=10)
    assert status(slow_body) == 408 and seconds < 5  # --body-timeout-s 1
    huge, _ = exchange(url, headers(url, "GET", "/v1/info", "X-Padding: " + "a" * 100_000 + "\r\n\r\n"))
    assert status(huge) == 431


def test_connections_past_the_limit_get_503(server):
    url, *_ = server
    parts = urlsplit(url)
    idle = [socket.create_connection((parts.hostname, parts.port)) for _ in range(24)]
    try:
        answer, _ = exchange(url, headers(url, "GET", "/v1/info", "\r\n"))
    finally:
        for sock in idle:
            sock.close()
    assert status(answer) == 503
    time.sleep(0.2)
    answer, _ = exchange(url, headers(url, "GET", "/v1/info", "Connection: close\r\n\r\n"))
    assert status(answer) == 200


# -- credentials, redirects, headers -----------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["a", " ", "short-token-15c", "token with spaces inside", "tökén-tökén-tökén-x"])
def test_a_weak_token_is_refused_at_start(tiny_index, tmp_path, capsys, token):
    code = main(["serve", "--index", str(tiny_index), "--db", str(tmp_path / "db.sqlite"), "--token", token,
                 "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "at least 16 printable ASCII characters" in err


def test_odd_credentials_are_401_or_403_never_500(client):
    fresh = TestClient(client.app)
    for value in (b"Bearer t\xc3\xb6ken", b"Bearer \xff\xfe", b"Bearer " + TOKEN.upper().encode(), TOKEN.encode()):
        assert fresh.get("/v1/info", headers={"Authorization": value}).status_code == 401
    for cookie in (b"enrich_token=t\xc3\xb6ken", b"enrich_token=\xff", b"enrich_token=" + TOKEN.encode() + b"\xff"):
        assert fresh.get("/", headers={"Cookie": cookie}).status_code == 401
    assert fresh.get("/?token=t%C3%B6ken").status_code == 401 and fresh.get("/?token=%FF%FE").status_code == 401
    fresh.cookies.set("enrich_token", TOKEN)
    for csrf in ("tökén", "é" * 64, "x"):
        assert fresh.post("/reviewer", data={"name": "eve", "csrf": csrf}).status_code == 403


def test_redirects_stay_on_this_site(client):
    fresh = TestClient(client.app, base_url="http://testserver")
    answer = fresh.get(f"http://testserver//evil.example/?token={TOKEN}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    csrf = client.app.state.csrf
    for target, expected in (("http://evil.example/x", "/"), ("//evil.example/x", "/"), ("/\\evil.example", "/"),
                             ("/batches/1?state=all", "/batches/1?state=all"), ("javascript:alert(1)", "/")):
        answer = fresh.post("/reviewer", data={"name": "ann", "next": target, "csrf": csrf}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == expected, target
    assert local_path("/batches/1") == "/batches/1" and local_path("https://x.example/a", "y.example") == "/"


def test_every_answer_carries_the_security_headers(client):
    fresh = TestClient(client.app)
    page = {"Accept": "text/html"}  # errors a browser asks for are pages, made outside the guard
    answers = [fresh.get("/v1/health"), fresh.get("/"), fresh.get("/static/workbench.css"),
               client.post("/v1/enrich", headers=JSON, content=b"x" * 200_000), client.get("/v1/info", headers=AUTH),
               fresh.get("/", headers=page), client.get("/nowhere", headers={**AUTH, **page}),
               client.get("/batches/1?done=%C2%B2", headers={**AUTH, **page}, cookies={"enrich_reviewer": "ann"})]
    assert [a.status_code for a in answers[-3:]] == [401, 404, 404] and "<html" in answers[-1].text
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_the_docs_are_served_from_the_package(client):
    page = client.get("/docs", headers=AUTH)
    assert page.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "") and "<script>" not in page.text  # nothing from elsewhere
    bundle = client.get("/static/swagger/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
    schema = client.get("/openapi.json", headers=AUTH).json()
    assert schema["paths"]["/v1/enrich"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EnrichRequest"}
    assert "Listing" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"  # Swagger UI's Authorize button
    assert schema["paths"]["/v1/enrich"]["post"]["security"] == [{"token": []}]
    assert "security" not in schema["paths"]["/v1/health"]["get"]


def test_the_readme_curl_example_works_as_written(server):
    url, *_ = server
    command = re.search(r"(curl -s http://127\.0\.0\.1:8000/v1/enrich .*?)\n```", README.read_text(), re.S).group(1)
    command = command.replace("http://127.0.0.1:8000", url)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ, "TOKEN": TOKEN},
                          timeout=60)
    assert done.returncode == 0 and '"id":"a1"' in done.stdout and '"status":"ok"' in done.stdout, done.stdout


# -- ids as sent, values JSON cannot carry, numbers past 64 bits ---------------------------------------------------
def test_ids_come_back_exactly_as_sent(client):
    ids = ["p\x1fq", "p\x1fr", "   ", "a", "a ", " a", "2\x1fa", "ü"]
    answer = client.post("/v1/enrich", headers=AUTH, json={"listings": [{"id": i, "title": "wooden train"} for i in ids]})
    assert answer.status_code == 200 and [r["id"] for r in answer.json()["listings"]] == ids
    assert all(r["status"] == "ok" for r in answer.json()["listings"])


def test_a_refusal_names_the_listing_within_its_own_request(client):
    def call(i: int):
        listings = [{"id": "x", "title": "kite"}, {"id": "x", "title": "kite"}] if i == 5 else (
            [{"id": "y", "title": "kite"}, {"id": "z", "title": "\u200b"}] if i == 6 else [{"id": "y", "title": "kite"}])
        return client.post("/v1/enrich", headers=AUTH, json={"listings": listings})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(12)))
    assert [a.status_code for a in answers] == [200] * 5 + [422, 422] + [200] * 5
    assert answers[5].json()["detail"] == [{"listing": 1, "id": "x", "error": "field 'id': duplicate id 'x' (first at listing 0)"}]
    assert answers[6].json()["detail"] == [{"listing": 1, "id": "z", "error": "field 'title': empty title"}]


@pytest.mark.parametrize("body", [b'{"listings": [{"id": "a", "title": 1e999}]}', b'{"listings": [{"id": "a", "title": NaN}]}',
                                  b'{"listings": [{"id": "a", "title": -Infinity}]}', b"1e999", b"NaN",
                                  b'{"listings": [{"id": "a", "title": "\\ud800"}]}', b'{"listings": [{"id": "\\udfff", "title": "x"}]}',
                                  b'{"listings": [{"id": "a", "title": "x", "\\ud800": 1}]}', b'{"listings": [{"id": "a", "title": "\xed\xa0\x80"}]}',
                                  b'{"listings": [{"id": "a", "title": 123456789012345678901234567890}]}',
                                  b'{"listings": [{"id": "a", "title": "\xff"}]}', b'{"listings": {"0": 1}}', b"[" * 5000])
def test_values_json_cannot_carry_are_a_4xx_with_a_message(client, body):
    answer = client.post("/v1/enrich", headers=JSON, content=body)
    assert answer.status_code == 422 and answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/batches/99999999999999999999999", "/batches/1/listings/99999999999999999999999",
                                  "/batches/1?page_number=99999999999999999999999", "/batches/-99999999999999999999999",
                                  "/batches/1e999", "/batches/1?min_score=nan&max_score=1e999"])
def test_numbers_past_64_bits_in_an_address_are_a_4xx(client, path):
    assert 400 <= client.get(path, headers=AUTH, cookies={"enrich_reviewer": "ann"}).status_code < 500
    assert client.get("/conflicts?page_number=99999999999999999999", headers=AUTH).status_code == 200  # an empty page
    assert client.post("/v1/batches/99999999999999999999999/resume", headers=AUTH).status_code == 404


# -- work killed midway ----------------------------------------------------------------------------------------------
def children(pid: int, name: str) -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and name in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def batch_state(db: Path, batch: int = 1) -> tuple[str, int, int]:
    with sqlite3.connect(db) as store:
        state, enriched = store.execute("SELECT state, enriched FROM batches WHERE id = ?", (batch,)).fetchone()
        stored = store.execute("SELECT COUNT(*) FROM listings WHERE batch = ?", (batch,)).fetchone()[0]
    return state, enriched, stored


def wait_for(condition, seconds: float = 120.0, every: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every)
    raise AssertionError("the condition did not come true in time")


@pytest.mark.parametrize("kill", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_an_upload_interrupted_by_a_kill_is_marked_and_resumed_without_duplicates(tiny_index, sample, tmp_path, kill):
    import httpx

    listings = pl.read_csv(sample["new"], infer_schema=False)
    upload = pl.concat([listings.with_columns(pl.col("uniq_id") + f"-{n}") for n in range(2)])  # 400 rows
    upload.write_csv(tmp_path / "upload.csv")
    db, flags = tmp_path / "review.sqlite", ("--columns", str(sample["columns"]), "--batch-listings", "4")
    server, url = start(tiny_index, db, *flags, token=TOKEN, wait_s=120)
    try:
        with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN}) as http, open(tmp_path / "upload.csv", "rb") as f:
            kept = http.post("/batches", files={"file": ("upload.csv", f)}, data={"csrf": derived(TOKEN, b"csrf")})
            assert kept.status_code == 303 and kept.headers["location"].startswith("/uploads/")
            answer = http.post(kept.headers["location"], data={"csrf": derived(TOKEN, b"csrf")})  # the roles as guessed
        assert answer.status_code == 303 and answer.headers["location"] == "/batches/1"
        wait_for(lambda: batch_state(db)[1] >= 40)
        os.killpg(server.pid, kill)  # the server and its model worker, midway
        server.wait(60)
    finally:
        stop(server) if server.poll() is None else None
    state, enriched, stored = batch_state(db)
    assert state == "enriching" and 0 < enriched == stored < upload.height  # as a killed server leaves it
    server, url = start(tiny_index, db, *flags, token=TOKEN, wait_s=120)
    try:
        assert batch_state(db)[0] == "interrupted"  # marked at start-up: no process holds it
        with httpx.Client(base_url=url, cookies={"enrich_token": TOKEN, "enrich_reviewer": "ann"}) as http:
            assert 'id="resume"' in http.get("/batches/1").text  # the page offers to enrich the rest
        with httpx.Client(base_url=url, headers=AUTH) as http:
            assert http.post("/v1/batches/1/resume").status_code == 202
            assert http.post("/v1/batches/1/resume").status_code == 409  # resumed already
        wait_for(lambda: batch_state(db)[0] != "enriching", every=0.5)
    finally:
        stop(server)
    assert batch_state(db) == ("ready", upload.height, upload.height)
    with sqlite3.connect(db) as store:
        ids = [r[0] for r in store.execute("SELECT id FROM listings WHERE batch = 1 ORDER BY row")]
    assert ids == upload["uniq_id"].to_list()  # every row once, in its place


def test_two_http_processes_answer_and_a_port_in_use_is_said_before_the_models_load(tiny_index, sample, tmp_path):
    import httpx

    process, url = start(tiny_index, tmp_path / "review.sqlite", "--columns", str(sample["columns"]), "--workers", "2",
                         token=TOKEN, wait_s=120)
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            answers = [http.post("/v1/enrich", json={"listings": [{"id": str(i), "title": "wooden train"}]}) for i in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert len(children(process.pid, "multiprocessing")) >= 2  # uvicorn's HTTP processes
        port = urlsplit(url).port
        taken = subprocess.run([sys.executable, "-m", "enrich", "serve", "--index", str(tiny_index), "--db",
                                str(tmp_path / "other.sqlite"), "--port", str(port)], capture_output=True, text=True,
                               timeout=60)
        assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "enrich serve: http" not in taken.stderr and "Loading weights" not in taken.stderr
    finally:
        stop(process)


def test_a_killed_model_worker_costs_a_503_at_most_and_is_started_again(server, tiny_index):
    url, folder, process = server
    import httpx

    def call(i: int) -> int:
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
            return http.post("/v1/enrich", json={"listings": [{"id": str(i), "title": f"wooden train {i}"}]}).status_code

    worker = children(process.pid, "enrich.serve.worker")
    assert len(worker) == 1
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(call, i) for i in range(40)]
        os.kill(worker[0], signal.SIGKILL)
        codes = [r.result() for r in running]
    assert set(codes) <= {200, 503}, codes
    assert wait_for(lambda: call(0) == 200, seconds=120, every=0.5)
    restarted = children(process.pid, "enrich.serve.worker")
    assert len(restarted) == 1 and restarted != worker


def test_a_token_of_any_printable_characters_works_in_the_link_the_cookie_and_the_header():
    from urllib.parse import quote

    from starlette.responses import PlainTextResponse

    from enrich.serve.security import Guard

    token = 'p;a"s\\s,%+&#=w0rd-0123456789'
    guard = Guard(PlainTextResponse("in"), ServeConfig(index="", token=token))
    client = TestClient(guard)
    link = client.get(f"/batches/1?token={quote(token, safe='')}", follow_redirects=False)
    assert link.status_code == 303 and link.headers["location"] == "/batches/1"
    assert client.get("/").text == "in"  # with the cookie the link set
    assert TestClient(guard).get("/v1/info", headers={"Authorization": f"Bearer {token}"}).text == "in"
    assert TestClient(guard).get("/", headers={"Cookie": "enrich_token=p"}).status_code == 401
