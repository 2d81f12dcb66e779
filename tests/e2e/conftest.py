"""Fixtures of the browser tests: one real Streamlit server and one Chromium for all of
tests/e2e (package scope: both are stopped before the rest of the suite runs), a fresh
browser context (a new Streamlit session) per test, and the app's first start on an empty
runs folder, watched once and shared.

The server starts on an empty temporary runs folder ($VAE_RUNS_DIR), so opening it the
first time trains the default run (digits, 2-D latent) in the background: `first_start`
watches that happen in the browser and records what was shown; every test that only reads
a trained run uses that run (`trained_run`). Tests that train write their own runs next
to it and address the default run by name in the URL (?run=digits-2d), so they do not
disturb each other.

Every training job uses one torch thread ($VAE_TRAIN_THREADS=1): the CPU is shared.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.e2e import harness
from tests.e2e.harness import PAGE_S, TRAIN_S, App

DEFAULT_RUN = "digits-2d"  # explorer/views/common.py DEFAULT_RUN
FIRST_START_EPOCHS = int(os.environ.get("VAE_E2E_FIRST_EPOCHS", "60"))  # long enough to see it train; make screenshots: 100


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="package")
def app(tmp_path_factory) -> App:
    """`streamlit run explorer/app.py` on a free loopback port with an empty runs folder."""
    base = tmp_path_factory.mktemp("e2e")
    server = harness.start_app(base / "runs", base / "streamlit.log", default_epochs=FIRST_START_EPOCHS)
    yield server
    harness.stop_app(server)
    harness.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (harness.ARTIFACTS / "streamlit.log").write_text(server.log_tail(2000))


@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = harness.launch_browser(p)
        yield b
        b.close()


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PAGE_S * 1000)
    return context, context.new_page()


@pytest.fixture
def page(browser, request):
    """A new browser context (a new Streamlit session) for one test; on failure its
    screenshot goes to test-artifacts/failed-TEST.png."""
    context, pg = new_page(browser)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        try:
            harness.screenshot(pg, "failed-" + re.sub(r"[^\w.-]+", "_", request.node.name))
        except Exception:  # the page may be gone; the failure itself is what matters
            pass
    context.close()


@pytest.fixture(scope="session")
def screenshot_dirs() -> list[Path]:
    """Where view screenshots go besides test-artifacts/: $VAE_SCREENSHOTS_DIR (make screenshots
    sets it to docs/screenshots)."""
    d = os.environ.get("VAE_SCREENSHOTS_DIR")
    return [harness.ROOT / d] if d else []


def view_url(app: App, view: str, **params) -> str:
    """The link the app itself puts in the address bar for VIEW: /VIEW?view=VIEW&..."""
    query = urlencode({"view": view, **{k: v for k, v in params.items() if v is not None}})
    return f"{app.url}/{view}?{query}"


def open_view(page, app: App, view: str, title: str, **params) -> None:
    """Open VIEW like a pasted link and wait until its page has run."""
    page.goto(view_url(app, view, **params))
    page.get_by_role("heading", name=title, exact=True).first.wait_for()
    harness.wait_idle(page)
    assert page.get_by_role("dialog").count() == 0, page.get_by_role("dialog").first.inner_text()


# -- the first start -------------------------------------------------------------------------

@dataclass
class FirstStart:
    """What the browser showed while the app started on an empty runs folder."""

    runs_before: list[str]  # run folders before the page was opened
    first_start_note: bool = False  # the "First start." explanation was shown
    progress: list[tuple[int, int]] = field(default_factory=list)  # (epoch, epochs) read off the bar
    curve_points: list[int] = field(default_factory=list)  # points per live curve, as seen
    rows: list[dict] = field(default_factory=list)  # everything harness.recorded() saw, in order
    map_points: int = 0  # points in the latent map when it appeared
    map_canvas: bool = False  # the map was drawn in a canvas
    clicks: int = 0  # clicks the test made (none)
    seconds: float = 0.0  # from opening the page to the latent map
    url: str = ""


@pytest.fixture(scope="package")
def first_start(app, browser, screenshot_dirs) -> FirstStart:
    """Open the app once on its empty runs folder, without clicking, and record what is shown
    until the latent map appears (tests/e2e/test_first_start.py checks the record)."""
    seen = FirstStart(runs_before=sorted(p.name for p in app.runs_dir.iterdir()))
    context, pg = new_page(browser)
    t0 = time.monotonic()
    try:
        pg.goto(app.url)
        harness.start_recorder(pg)
        map_chart = harness.keyed(pg, "latent_map_chart")
        deadline = t0 + TRAIN_S
        while time.monotonic() < deadline and not map_chart.locator("canvas").count():
            if pg.evaluate(harness.TRAINING_DRAWN_JS):  # a picture of the page while it trains
                harness.screenshot(pg, "first-start-training", *screenshot_dirs)
                break
            time.sleep(0.2)
        map_chart.locator("canvas").first.wait_for(timeout=max(1.0, deadline - time.monotonic()) * 1000)
        harness.wait_idle(pg)
        seen.seconds = time.monotonic() - t0
        rows = harness.recorded(pg)
        seen.first_start_note = any(r["first_start"] for r in rows)
        seen.progress = [(r["epoch"], r["epochs"]) for r in rows if r["epoch"] is not None]
        seen.curve_points = [r["points"] for r in rows if r["points"]]
        seen.rows = rows
        seen.map_canvas = map_chart.locator("canvas").count() > 0
        seen.map_points = len(harness.sample_points(map_chart))
        seen.url = pg.url
        harness.screenshot(pg, "first-start-latent-map")
    finally:
        context.close()
    return seen


@dataclass
class TrainedRun:
    name: str
    path: Path


@pytest.fixture(scope="package")
def trained_run(app, first_start) -> TrainedRun:
    """The default run the first start trained (done), for the tests that only read it."""
    path = app.runs_dir / DEFAULT_RUN
    status = json.loads((path / "status.json").read_text())
    assert status["state"] == "done", status
    return TrainedRun(DEFAULT_RUN, path)
