"""The review workbench as a team uses it, through the app's test client: bulk actions on exactly the filtered
view (previewed, confirmed, undone as one), decisions checked against the known paths, two reviewers who do not
collide, undo, skips, progress, search, errors as pages, the upload's mapping step, the export, the conflicts. The
same session runs in a real browser in test_workbench_browser.py (slow)."""

import io
import re
import shutil
import sqlite3
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import polars as pl
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from enrich.catalog import load_catalog
from enrich.cli import main
from enrich.serve.app import create_app
from enrich.serve.store import SCHEMA, Store
from enrich.serve.workbench import import_output
from enrich.settings import ServeConfig

TOKEN = "test-token-0123456789"
SAFE_ROWS = 12  # the first rows are made "safe" (review = false): the sample's own policy marks none


@pytest.fixture(scope="module")
def enriched(tiny_index, sample, sample_columns, tmp_path_factory):
    """The sample's new listings as `enrich run` enriched them, with the first rows marked safe."""
    folder = tmp_path_factory.mktemp("enriched")
    assert main(["run", str(sample["new"]), "--index", str(tiny_index), "--out", str(folder / "out.parquet"),
                 "--columns", str(sample["columns"]), "--quiet"]) == 0
    output = pl.read_parquet(folder / "out.parquet").with_row_index("n").with_columns(
        review=pl.col("n") >= SAFE_ROWS).drop("n")
    return load_catalog(sample["new"], sample_columns), output


@pytest.fixture
def app(tiny_index, sample_columns, enriched, tmp_path):
    db = tmp_path / "review.sqlite"
    import_output(Store(db), "new listings", *enriched, "test")
    app = create_app(ServeConfig(index=str(tiny_index), db=str(db), token=TOKEN, columns=sample_columns,
                                 uploads=str(tmp_path / "uploads")))
    with TestClient(app):  # runs the app's start-up: its model worker
        yield app


def browser(app, name: str | None) -> TestClient:
    """A reviewer's browser: the token's cookie, a name if given, pages asked for as a browser asks."""
    client = TestClient(app, headers={"Accept": "text/html,application/xhtml+xml"})
    client.cookies.set("enrich_token", TOKEN)
    if name:
        client.cookies.set("enrich_reviewer", name)
    return client


def form(app, **fields) -> dict:
    return {"csrf": app.state.csrf, **fields}


def row_of(location: str) -> int:
    return int(re.search(r"/listings/(\d+)", location)[1])


def current(app) -> dict[str, str | None]:
    """Each decided listing's current path."""
    with sqlite3.connect(app.state.workbench.store.path) as db:
        return dict(db.execute("SELECT listing, after FROM current WHERE scope = 1").fetchall())


def test_a_bulk_action_takes_exactly_the_filtered_view_previewed_and_is_undone_as_one(app, enriched):
    ann = browser(app, "ann")
    listings, output = enriched
    top = output["category"].str.split(" > ").list.first().value_counts(sort=True)["category"][0]
    in_view = output.filter((pl.col("category").str.starts_with(top + " > ") | (pl.col("category") == top))
                            & (pl.col("status") == "ok"))
    view = {"top": top, "min_score": "0.0", "max_score": "1"}
    preview = ann.get("/batches/1/bulk", params={**view, "kind": "accept"})
    assert preview.status_code == 200
    assert f'<span id="count">{in_view.height}</span>' in preview.text
    assert in_view.height > 0 and escape(top) in preview.text
    assert current(app) == {}  # a preview decides nothing

    stale = ann.post("/batches/1/bulk", data=form(app, kind="accept", view=urlencode({"top": top}), expected=in_view.height + 1),
                     follow_redirects=False)
    assert stale.status_code == 409 and "changed since the preview" in stale.text and current(app) == {}

    done = ann.post("/batches/1/bulk", data=form(app, kind="accept", view=urlencode({"top": top}), expected=in_view.height),
                    follow_redirects=False)
    assert done.status_code == 303
    decided = current(app)
    assert set(decided) == set(in_view["id"]) and all(decided[i] == c for i, c in in_view.select("id", "category").iter_rows())
    page = ann.get(done.headers["location"])
    assert f"accepted the predicted category of <strong>{in_view.height}</strong> listings" in page.text
    op = parse_qs(urlsplit(done.headers["location"]).query)["op"][0]

    # Someone changes one of them since: undoing the bulk action leaves that one as it is.
    bob = browser(app, "bob")
    changed_id = in_view["id"][0]
    changed_row = int(listings.filter(pl.col("id") == changed_id)["row"][0])
    path = in_view["category"][1]
    assert bob.post(f"/batches/1/listings/{changed_row}", data=form(app, action="type", path=path, seen=0, confirm=0),
                    follow_redirects=False).status_code == 409  # ann's decision is fresh: bob is warned first
    seq = app.state.workbench.store.current(1, changed_id)["seq"]
    assert bob.post(f"/batches/1/listings/{changed_row}", data=form(app, action="type", path=path, seen=seq, confirm=seq),
                    follow_redirects=False).status_code == 303
    undone = ann.post(f"/batches/1/operations/{op}/undo", data=form(app, view=urlencode({"top": top})), follow_redirects=False)
    assert undone.status_code == 303
    message = ann.get(undone.headers["location"]).text
    assert f"{in_view.height - 1} listings are back to pending; 1 decided again since" in message
    assert {k: v for k, v in current(app).items() if v} == {changed_id: path}
    assert ann.post(f"/batches/1/operations/{op}/undo", data=form(app), follow_redirects=False).status_code == 303
    assert {k: v for k, v in current(app).items() if v} == {changed_id: path}  # a second undo changes nothing


def test_accepting_what_enrich_marks_safe_takes_only_review_false(app, enriched):
    ann = browser(app, "ann")
    _, output = enriched
    preview = ann.get("/batches/1/bulk", params={"kind": "safe"})
    assert f'<span id="count">{SAFE_ROWS}</span>' in preview.text
    ann.post("/batches/1/bulk", data=form(app, kind="safe", view="", expected=SAFE_ROWS))
    assert set(current(app)) == set(output.filter(~pl.col("review"))["id"])
    queue = ann.get("/batches/1", params={"safe": "1"})
    assert '<strong id="total">0</strong>' in queue.text  # the safe pending view is empty now
    undo = ann.post("/batches/1/undo", data=form(app), follow_redirects=False)  # the last action was the bulk one:
    assert "op=" in undo.headers["location"] and 'id="undo-bulk"' in ann.get(undo.headers["location"]).text  # its button
    assert set(current(app)) == set(output.filter(~pl.col("review"))["id"])  # and nothing undone behind the reviewer's back


def test_a_decided_path_is_a_known_path_and_a_new_one_is_confirmed_as_new(app):
    ann = browser(app, "ann")
    known = app.state.workbench.known_paths
    deep = next(p for p in known if p.count(" > ") >= 1)
    typo = ann.post("/batches/1/listings/1", data=form(app, action="type", path="model building"), follow_redirects=False)
    assert typo.status_code == 422 and "is not a known category: nothing was saved" in typo.text and current(app) == {}
    near = ann.post("/batches/1/listings/1", data=form(app, action="type", path=deep[:-1]), follow_redirects=False)
    assert near.status_code == 422 and f'value="{escape(deep)}"' in near.text  # the path it nearly is

    loose = "  " + deep.upper().replace(" > ", ">") + " "
    saved = ann.post("/batches/1/listings/1", data=form(app, action="type", path=loose), follow_redirects=False)
    assert saved.status_code == 303 and current(app) == {app.state.workbench.store.listing(1, 1)["id"]: deep}

    listing = app.state.workbench.store.listing(1, 2)
    predicted = listing["output"]["category"]
    parent = predicted.rsplit(" > ", 1)[0]
    assert ann.post("/batches/1/listings/2", data=form(app, action="parent", path="Not > A > Parent"),
                    follow_redirects=False).status_code == 422
    assert ann.post("/batches/1/listings/2", data=form(app, action="parent", path=parent), follow_redirects=False).status_code == 303
    assert current(app)[listing["id"]] == parent
    page = ann.get("/batches/1/listings/3")
    assert 'id="parent"' in page.text  # the parent level, one key away

    new = ann.post("/batches/1/listings/3", data=form(app, action="new", path="Toys >  Model building "), follow_redirects=False)
    assert new.status_code == 303
    assert app.state.workbench.store.history(1, app.state.workbench.store.listing(1, 3)["id"])[-1]["action"] == "new"
    assert "Toys > Model building" in ann.get("/paths.json").json()  # known from now on
    again = ann.post("/batches/1/listings/4", data=form(app, action="type", path="toys > model BUILDING"), follow_redirects=False)
    assert again.status_code == 303


def test_two_reviewers_are_handed_different_listings_and_warned_before_overwriting(app):
    ann, bob = browser(app, "ann"), browser(app, "bob")
    first = row_of(ann.get("/batches/1/next", follow_redirects=False).headers["location"])
    second = row_of(bob.get("/batches/1/next", follow_redirects=False).headers["location"])
    assert first != second
    held = bob.get(f"/batches/1/listings/{first}")
    assert "ann has this listing open" in held.text
    decided = ann.post(f"/batches/1/listings/{first}", data=form(app, action="accept", seen=0), follow_redirects=False)
    third = row_of(decided.headers["location"])
    assert third not in (first, second)  # bob's listing is his: ann is handed the one after
    clash = bob.post(f"/batches/1/listings/{first}", data=form(app, action="skip"), follow_redirects=False)
    assert clash.status_code == 303  # skipping decides nothing: no warning
    listing_id = app.state.workbench.store.listing(1, first)["id"]
    seq = app.state.workbench.store.current(1, listing_id)["seq"]
    warned = bob.post(f"/batches/1/listings/{first}", data=form(app, action="accept", seen=0), follow_redirects=False)
    assert warned.status_code == 409 and "ann</strong> decided this listing" in warned.text
    assert app.state.workbench.store.current(1, listing_id)["seq"] == seq  # nothing saved
    confirmed = bob.post(f"/batches/1/listings/{first}", data=form(app, action="accept", seen=0, confirm=seq),
                         follow_redirects=False)
    assert confirmed.status_code == 303 and app.state.workbench.store.current(1, listing_id)["who"] == "bob"


def test_undo_skip_progress_and_a_message_that_names_the_listing_and_path(app):
    ann, bob = browser(app, "ann"), browser(app, "bob")
    store = app.state.workbench.store
    row = row_of(ann.get("/batches/1/next", follow_redirects=False).headers["location"])
    listing = store.listing(1, row)
    after = ann.post(f"/batches/1/listings/{row}", data=form(app, action="accept"), follow_redirects=False)
    page = ann.get(after.headers["location"]).text
    assert "Saved:" in page and escape(listing["title"][:30]) in page and escape(listing["output"]["category"]) in page
    assert re.search(r'<strong id="mine">1</strong>', page) and re.search(r'<strong id="today">1</strong>', page)

    undone = ann.post("/batches/1/undo", data=form(app), follow_redirects=False)
    assert row_of(undone.headers["location"]) == row and current(app)[listing["id"]] is None
    assert "Undone:" in ann.get(undone.headers["location"]).text
    assert ann.post("/batches/1/undo", data=form(app), follow_redirects=False).headers["location"].endswith("nothing=1")

    skipped = ann.post(f"/batches/1/listings/{row}", data=form(app, action="skip"), follow_redirects=False)
    assert row_of(skipped.headers["location"]) != row
    queue = ann.get("/batches/1", params={"state": "skipped"}).text
    assert '<strong id="total">1</strong>' in queue
    ann.post("/batches/1/unskip", data=form(app))  # and back it comes
    assert '<strong id="total">0</strong>' in ann.get("/batches/1", params={"state": "skipped"}).text
    ann.post(f"/batches/1/listings/{row}", data=form(app, action="skip"))
    pending = int(re.search(r'<strong id="total">(\d+)</strong>', ann.get("/batches/1").text)[1])
    assert pending == int(re.search(r'<strong id="total">(\d+)</strong>', bob.get("/batches/1").text)[1]) - 1
    store_rows = [row_of(bob.get("/batches/1/next", follow_redirects=False).headers["location"]) for _ in range(1)]
    assert store_rows == [row]  # ann's skip is hers: it leaves her pending view, and bob is handed it


def test_search_finds_words_of_title_brand_and_category_and_bad_filters_are_a_message(app, enriched):
    ann = browser(app, "ann")
    listings, output = enriched
    lego = listings.filter(pl.col("title").str.to_lowercase().str.contains("lego"))
    title_words = listings["title"][0].split()[:2]
    found = ann.get("/batches/1", params={"q": " ".join(w[:4] for w in title_words)})
    assert escape(listings["title"][0][:20]) in found.text
    brand = listings.filter(pl.col("brand").is_not_null())["brand"][0]
    by_brand = ann.get("/batches/1", params={"q": brand})
    total = int(re.search(r'<strong id="total">(\d+)</strong>', by_brand.text)[1])
    assert total >= listings.filter(pl.col("brand") == brand).height > 0
    word = output["category"][0].split(" > ")[-1].split()[0]
    by_category = ann.get("/batches/1", params={"q": word})
    assert int(re.search(r'<strong id="total">(\d+)</strong>', by_category.text)[1]) >= 1
    assert lego.height == 0 or int(re.search(r'<strong id="total">(\d+)</strong>', ann.get(
        "/batches/1", params={"q": "LEGO"}).text)[1]) >= lego.height

    bad = ann.get("/batches/1", params={"state": "bogus", "min_score": "abc", "max_score": "2"})
    assert bad.status_code == 200 and "state &#39;bogus&#39; is not one of" in bad.text
    assert "min score &#39;abc&#39; is not a number from 0 to 1" in bad.text and "max score &#39;2&#39;" in bad.text
    assert ann.get("/batches/1", params={"q": "\"*)("}).status_code == 200  # punctuation is no FTS5 syntax error
    assert "no listing of this batch is predicted in the department" in ann.get("/batches/1", params={"top": "Nowhere"}).text
    assert "Back to its first page" in ann.get("/batches/1", params={"page": "999"}).text


def test_errors_are_pages_for_a_browser_and_json_for_the_api(app):
    ann = browser(app, "ann")
    missing = ann.get("/batches/999")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"] and "no batch 999" in missing.text
    assert "enrich workbench" in missing.text
    unknown = ann.get("/no/such/page")
    assert unknown.status_code == 404 and "<h1>Not found</h1>" in unknown.text
    stranger = TestClient(app, headers={"Accept": "text/html"})
    refused = stranger.get("/batches/1")
    assert refused.status_code == 401 and "text/html" in refused.headers["content-type"] and "token" in refused.text
    assert TestClient(app).get("/v1/info").headers["content-type"].startswith("application/json")
    api_like = TestClient(app)
    api_like.cookies.set("enrich_token", TOKEN)
    api_like.cookies.set("enrich_reviewer", "ann")
    assert api_like.get("/batches/999").json() == {"detail": "there is no batch 999"}
    nameless = browser(app, None)
    asked = nameless.get("/batches/1", follow_redirects=False)
    assert asked.status_code == 303 and asked.headers["location"].startswith("/reviewer?next=")
    named = nameless.post("/reviewer", data=form(app, name="  Ann  Lee ", next="/batches/1"), follow_redirects=False)
    assert named.headers["location"] == "/batches/1" and nameless.get("/batches/1").status_code == 200
    assert "Ann Lee" in nameless.get("/batches/1").text
    assert nameless.post("/reviewer", data=form(app, name="x", next="https://evil.example/"),
                         follow_redirects=False).headers["location"] == "/"


def upload(client, app, name: str, content: bytes) -> str:
    answer = client.post("/batches", files={"file": (name, io.BytesIO(content))}, data=form(app, name=""),
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def wait_ready(app, batch: int) -> dict:
    for _ in range(200):
        found = app.state.workbench.store.batch(batch)
        if found["state"] != "enriching":
            return found
        time.sleep(0.05)
    raise AssertionError("the batch was not enriched in time")


def test_an_upload_is_mapped_checked_and_named_when_it_comes_again(app, sample):
    ann = browser(app, "ann")
    raw = pl.read_csv(sample["new"], infer_schema=False).head(20).rename({"product_name": "Name of it"}).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("")).otherwise(pl.col("Name of it")).alias("Name of it"),
        pl.lit("https://img.example/a.jpg").alias("image_link"))
    content = raw.write_csv().encode()
    mapping = upload(ann, app, "shop.csv", content)
    page = ann.get(mapping)
    assert "which column holds the title? Choose it below" in page.text
    assert str(app.state.workbench.uploads) not in page.text  # the server's paths stay its own
    fields = {"mapped": "1", "id": "uniq_id", "title": "Name of it", "brand": "manufacturer", "category": "", "tags": "",
              "text": ["description"], "image": "image_link", "encoding": "utf-8", "delimiter": "", "format": ""}
    checked = ann.post(mapping, data=form(app, step="check", **fields))
    assert checked.status_code == 200 and "<strong>19</strong> listings to enrich" in checked.text
    assert "field &#39;Name of it&#39;: empty title" in checked.text  # the refused row, with why
    started = ann.post(mapping, data=form(app, step="start", **fields), follow_redirects=False)
    assert started.status_code == 303
    batch = int(started.headers["location"].rsplit("/", 1)[1])
    assert wait_ready(app, batch)["state"] == "ready"
    queue = ann.get(f"/batches/{batch}", params={"state": "all"})
    assert "1 rows of the file could not be enriched" in queue.text and "empty title" in queue.text
    row = app.state.workbench.store.listing(batch, 1)
    assert row["title"] == raw["Name of it"][0] and row["image"] == "https://img.example/a.jpg"
    assert 'src="https://img.example/a.jpg"' in ann.get(f"/batches/{batch}/listings/1").text

    again = ann.get(upload(ann, app, "shop-copy.csv", content))
    assert 'id="duplicate"' in again.text and "shop" in again.text

    empty = ann.get(upload(ann, app, "empty.csv", b""))
    assert "is empty: there is nothing to enrich" in empty.text and 'id="start-enrich"' not in empty.text
    noise = ann.get(upload(ann, app, "noise.csv", bytes(range(256)) * 40))
    assert 'id="start-enrich"' not in noise.text and str(app.state.workbench.uploads) not in noise.text
    text = ann.post("/batches", files={"file": ("notes.txt", io.BytesIO(b"a,b"))}, data=form(app))
    assert text.status_code == 422 and "is not a catalog file" in text.text and "text/html" in text.headers["content-type"]


def test_the_export_is_the_latest_decision_per_listing_and_the_history_on_request(app, tmp_path):
    ann = browser(app, "ann")
    store = app.state.workbench.store
    first = store.listing(1, 1)
    known = sorted(app.state.workbench.known_paths)
    ann.post("/batches/1/listings/1", data=form(app, action="type", path=known[0]))
    ann.post("/batches/1/listings/1", data=form(app, action="type", path=known[1], seen=store.current(1, first["id"])["seq"]))
    ann.post("/batches/1/listings/2", data=form(app, action="type", path=known[2]))
    ann.post("/batches/1/undo", data=form(app))  # the second listing back to pending
    latest = pl.read_csv(io.BytesIO(ann.get("/export", params={"batch": 1}).content))
    assert latest.select("listing", "after").rows() == [(first["id"], known[1])]
    history = pl.read_csv(io.BytesIO(ann.get("/export", params={"history": 1}).content))
    assert history["action"].to_list() == ["type", "type", "type", "undo"] and history["undoes"][3] == history["seq"][2]
    parquet = ann.get("/export", params={"format": "parquet"})
    assert pl.read_parquet(io.BytesIO(parquet.content)).height == 1
    assert main(["review", "export", "--db", str(store.path), "--out", str(tmp_path / "d.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "d.parquet")["after"].to_list() == [known[1]]
    assert main(["review", "export", "--db", str(store.path), "--out", str(tmp_path / "h.csv"), "--history"]) == 0
    from enrich.catalog.decisions import read_decisions

    assert read_decisions(tmp_path / "h.csv")["category"].to_list() == [known[1]]  # the undone one is no label


def test_a_store_written_before_the_workbench_opens_with_its_decisions(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.execute("INSERT INTO batches (name, source, created_at, rows, state) VALUES ('b', 's', 't', 1, 'ready')")
        db.execute("INSERT INTO listings VALUES (1, 1, 'x', 'ok', 'Red kite', 'Acme', '', NULL, '[]', 'Toys > Kites', 0.4,"
                   " 1.0, 0.5, '{\"review\": true}')")
        db.execute("INSERT INTO decisions (batch, listing, before, after, action, who, at, source) VALUES "
                   "(1, 'x', 'Toys > Kites', 'Toys', 'type', 'ann', '2026-01-01T00:00:00+00:00', 'queue')")
    store = Store(path)
    assert store.current(1, "x")["after"] == "Toys"
    from enrich.serve.queue import View, listings

    assert listings(store, 1, View(state="decided", q="kite"), "ann")[1] == 1
    shutil.copy(path, tmp_path / "again.sqlite")
    assert Store(tmp_path / "again.sqlite").current(1, "x")["after"] == "Toys"  # opening twice changes nothing


@pytest.fixture(scope="module")
def conflicted_index(sample, sample_columns, tiny_encoder_config, tmp_path_factory):
    """The sample's reference catalog with three near-copies that carry another path: conflicts to resolve."""
    from enrich.index.build import build_index
    from enrich.settings import EnrichConfig

    folder = tmp_path_factory.mktemp("conflicted")
    reference = pl.read_csv(sample["reference"], infer_schema=False)
    copies = reference.filter(pl.col("amazon_category_and_sub_category").is_not_null()).head(3).with_columns(
        uniq_id=pl.col("uniq_id") + "-copy", amazon_category_and_sub_category=pl.lit("Hobbies > Collectibles"))
    pl.concat([reference, copies]).write_csv(folder / "reference.csv")
    build_index(folder / "reference.csv", folder / "index", sample_columns, EnrichConfig(encoder=tiny_encoder_config),
                progress=False)
    return folder / "index"


def test_a_settled_conflict_leaves_the_list_and_is_shown_on_request(conflicted_index, sample_columns, tmp_path):
    app = create_app(ServeConfig(index=str(conflicted_index), db=str(tmp_path / "review.sqlite"), token=TOKEN,
                                 columns=sample_columns, conflict_cosine=0.9999))  # the tiny encoder: copies only
    with TestClient(app):
        settle_a_conflict(app)


def settle_a_conflict(app):
    ann = browser(app, "ann")
    groups = app.state.workbench.conflicts()
    assert len(groups) >= 3 and all(len(g.paths) > 1 for g in groups)
    group = next(g for g in groups if any(p == "Hobbies > Collectibles" for p, _ in g.paths))
    page = ann.get("/conflicts")
    assert f'id="{group.key}"' in page.text and f"{len(groups)} groups to settle" in page.text
    assert ann.post("/conflicts", data=form(app, key=group.key, path="Not > One > Of > Theirs")).status_code == 422
    settled = ann.post("/conflicts", data=form(app, key=group.key, path="Hobbies > Collectibles"), follow_redirects=False)
    assert settled.status_code == 303
    moved = [m for m in group.members if m["category"] != "Hobbies > Collectibles"]
    message = ann.get(settled.headers["location"]).text
    assert f"{len(moved)} listing{'' if len(moved) == 1 else 's'} relabelled" in message and 'id="undo-settlement"' in message
    assert f'id="{group.key}"' not in ann.get("/conflicts").text
    shown = ann.get("/conflicts", params={"resolved": 1}).text
    assert f'id="{group.key}"' in shown and "Settled: <strong>Hobbies &gt; Collectibles</strong> (ann)" in shown
    store = app.state.workbench.store
    decided = store.decisions()
    unchanged = {m["id"] for m in group.members if m not in moved} - {group.key}
    assert set(decided["listing"]) == {m["id"] for m in moved} | {group.key} and not unchanged & set(decided["listing"])
    op = int(settled.headers["location"].split("settled_by=")[1])
    assert ann.post("/conflicts/undo", data=form(app, op=op), follow_redirects=False).status_code == 303
    assert f'id="{group.key}"' in ann.get("/conflicts").text and store.decisions().height == 0  # to settle again
    settled = ann.post("/conflicts", data=form(app, key=group.key, path="Hobbies > Collectibles"), follow_redirects=False)
    exported = store.decisions()
    assert set(exported["after"]) == {"Hobbies > Collectibles"} and exported["batch"].is_null().all()
