"""A review session in a real browser (Chromium, through Playwright), by keyboard: a filtered bulk accept with its
preview and undo, a typo refused and a suggestion taken, a completion taken, two reviewers on one batch who never
get the same listing, undo, the export. `make screenshot` runs it with ENRICH_SCREENSHOTS=docs to save the
workbench at 1280x720 and 390 px."""

import os
import shutil
import signal

import polars as pl
import pytest

from benchmarks.serve import start
from enrich.cli import main
from enrich.serve.store import Store

TOKEN = "test-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (CI installs it)")]


@pytest.fixture
def review_server(sample_index, sample, tmp_path):
    """`enrich serve` over the sample index (the real encoder: its similar listings mean something), holding the
    sample's new listings as enriched by `enrich run` and imported as a batch."""
    index, _ = sample_index
    columns = ["--columns", str(sample["columns"])]
    assert main(["run", str(sample["new"]), "--index", str(index), "--out", str(tmp_path / "out.parquet"), *columns,
                 "--quiet"]) == 0
    assert main(["review", "import", str(tmp_path / "out.parquet"), "--input", str(sample["new"]), "--db",
                 str(tmp_path / "review.sqlite"), "--name", "New toys, week 49", *columns]) == 0
    server, url = start(index, tmp_path / "review.sqlite", *columns, token=TOKEN, wait_s=120)
    yield url, Store(tmp_path / "review.sqlite")
    os.killpg(server.pid, signal.SIGTERM)
    server.wait()


def sign_in(browser, url: str, name: str, viewport: dict):
    """A reviewer's own browser: the printed address, then the batch, where the page asks for a name once."""
    page = browser.new_context(viewport=viewport, accept_downloads=True).new_page()
    page.goto(f"{url}/?token={TOKEN}")
    page.click("table.batches td:first-child a")
    page.fill("#reviewer-name", name)
    page.keyboard.press("Enter")
    page.wait_for_selector("table.queue")
    return page


def shown_total(page) -> int:
    return int(page.inner_text("#total"))


def bulk_accept_a_department_and_undo(page, store: Store, shots: str | None) -> None:
    """The queue filtered to one department; its bulk preview counts exactly that view; confirmed, then undone."""
    everything = shown_total(page)
    department = page.eval_on_selector_all("select[name=top] option", "o => o.map(e => e.value).filter(Boolean)")[0]
    page.select_option("select[name=top]", department)
    page.focus("#search")
    page.keyboard.press("Enter")
    page.wait_for_url("**top=*")
    in_view = shown_total(page)
    assert 0 < in_view < everything
    page.focus("#bulk-accept")
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm")
    assert int(page.inner_text("#count")) == in_view
    page.keyboard.press("Enter")  # the confirm button has the focus
    page.wait_for_selector("#undo-bulk")
    assert f"accepted the predicted category of {in_view} listings" in page.inner_text("#message")
    decided = store.decisions()
    assert decided.height == in_view and decided["after"].str.starts_with(department).all()
    if shots:
        page.screenshot(path=f"{shots}/workbench-queue.png")
    page.focus("#undo-bulk")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=listings are back to pending")
    assert store.decisions().height == 0 and shown_total(page) == in_view


def type_a_typo_then_a_completion(page, store: Store) -> None:
    """A path with a typo is refused with the nearest known paths (nothing saved); `1` takes the first. Words of a
    path show completions; Enter takes the first."""
    before = store.decisions(latest=False).height
    page.keyboard.press("/")
    page.keyboard.type("Arts and Crafts > Colouring Pencills")
    page.keyboard.press("Enter")
    page.wait_for_selector("#refusal")
    assert store.decisions(latest=False).height == before
    suggestion = page.inner_text("#refusal button[data-key='1']").rsplit(" ", 1)[0]
    page.keyboard.press("1")
    page.wait_for_selector("#message")
    assert suggestion in page.inner_text("#message")
    page.keyboard.press("/")
    page.keyboard.type("colour pens")
    page.wait_for_selector("#completions li")
    completion = page.inner_text("#completions li >> nth=0")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message")
    assert completion in page.inner_text("#message")


def test_a_review_session_runs_by_keyboard_in_chromium(review_server):
    from playwright.sync_api import sync_playwright

    url, store = review_server
    shots = os.environ.get("ENRICH_SCREENSHOTS")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ann = sign_in(chromium, url, "ann", {"width": 1280, "height": 720})
        bulk_accept_a_department_and_undo(ann, store, shots)

        # Both reviewers take their next listing at once: never the same one.
        ann.goto(f"{url}/batches/1")
        bob = sign_in(chromium, url, "bob", {"width": 390, "height": 844})
        ann.keyboard.press("n")
        bob.keyboard.press("n")
        ann.wait_for_selector("#accept")
        bob.wait_for_selector("#accept")
        assert ann.inner_text("#title") != bob.inner_text("#title")
        accept, similar = ann.locator("#accept").bounding_box(), ann.locator("table.similar").bounding_box()
        assert accept["x"] + accept["width"] <= 1280 and accept["y"] + accept["height"] <= 720  # the decision, and
        assert similar["y"] < 720 / 2  # the evidence, above the fold at 1280x720
        first, predicted = ann.inner_text("#title"), ann.inner_text("#predicted")
        ann.keyboard.press("a")
        ann.wait_for_selector("#message")
        assert first in ann.inner_text("#message") and predicted in ann.inner_text("#message")
        assert ann.inner_text("#title") not in (first, bob.inner_text("#title"))  # bob's is his: ann gets another
        assert bob.evaluate("document.documentElement.scrollWidth") <= 390  # nothing scrolls sideways
        assert bob.locator("#accept").bounding_box()["x"] + bob.locator("#accept").bounding_box()["width"] <= 390
        if shots:
            bob.screenshot(path=f"{shots}/workbench-390.png")
        bob.keyboard.press("a")
        bob.wait_for_selector("#message")

        type_a_typo_then_a_completion(ann, store)
        if shots:
            ann.screenshot(path=f"{shots}/workbench.png")
        last = store.decisions()["listing"][-1]
        ann.keyboard.press("u")
        ann.wait_for_selector("text=Undone:")
        assert store.current(1, last)["after"] is None

        ann.goto(f"{url}/")
        with ann.expect_download() as download:
            ann.click("#export")
        exported = pl.read_csv(download.value.path())
        chromium.close()
    # The latest decision per listing, the undone one left out; no listing decided by both reviewers.
    assert sorted(exported["who"].to_list()) == ["ann", "ann", "bob"] and last not in exported["listing"].to_list()
    assert exported["listing"].n_unique() == exported.height
