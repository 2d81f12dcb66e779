"""The URL round trip: set up a view by clicking and typing, copy the address, open it in a
new browser session: the same run, view, endpoints, path and t come back."""

import os
import re
import shutil
import time

import pytest

from tests.e2e import harness
from tests.e2e.conftest import new_page, open_view
from tests.e2e.test_interpolate import decoded_canvas, endpoint, pixels, t_slider


@pytest.fixture
def newer_run(app, trained_run):
    """A copy of the trained run, made the newest: a session that is not told otherwise
    opens it, so restoring the other run from a link is a real test."""
    copy = app.runs_dir / f"{trained_run.name}-copy"
    shutil.copytree(trained_run.path, copy)
    now = time.time() + 1
    os.utime(copy, (now, now))
    yield copy.name
    shutil.rmtree(copy, ignore_errors=True)


def active_run(page) -> str:
    """The sidebar's active run as shown, e.g. 'digits-2d  (done)'."""
    return harness.keyed(page, "active_run").locator("input").input_value()


def test_url_round_trip_restores_run_view_and_endpoints(page, browser, app, trained_run, newer_run):
    open_view(page, app, "runs", "Runs")
    assert newer_run in active_run(page), "a fresh session should open the newest run"

    # Choose the older run in the sidebar, go to Interpolate, set it up by hand.
    harness.keyed(page, "active_run").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(trained_run.name)}\s+\(done\)$")).click()
    harness.wait_idle(page)
    page.get_by_role("link", name="Interpolate").click()
    page.get_by_role("heading", name="Interpolate", exact=True).wait_for()
    harness.wait_idle(page)
    for which, value in (("a", 5), ("b", 42)):
        box = harness.keyed(page, f"endpoint_{which}").locator("input")
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_function(f"() => location.search.includes('{which}={value}')")
        harness.wait_idle(page)
    harness.keyed(page, "interp_path").get_by_text("slerp", exact=True).click()
    page.wait_for_function("() => location.search.includes('path=slerp')")
    harness.wait_idle(page)
    slider = t_slider(page)
    slider.focus()
    for _ in range(5):
        slider.press("ArrowRight")
    page.get_by_role("heading", name="At t = 0.55").wait_for()
    page.wait_for_function("() => location.search.includes('t=0.55')")
    harness.wait_idle(page)
    link = page.url
    image = pixels(decoded_canvas(page))

    # The copied link, opened in a new browser session.
    context, other = new_page(browser)
    try:
        other.goto(link)
        other.get_by_role("heading", name="Interpolate", exact=True).wait_for()
        other.get_by_role("heading", name="At t = 0.55").wait_for()
        harness.wait_idle(other)
        assert trained_run.name in active_run(other) and newer_run not in active_run(other)
        assert (endpoint(other, "a"), endpoint(other, "b")) == (5, 42)
        assert harness.keyed(other, "interp_path").get_by_role("radio", name="slerp").is_checked()
        assert t_slider(other).input_value() == "0.55"
        other.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
        assert pixels(decoded_canvas(other)) == image, "a different image at the same t"
        harness.assert_no_traceback(other)
    finally:
        context.close()


def test_url_round_trip_restores_the_selected_sample(page, browser, app, trained_run, newer_run):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    box = harness.keyed(page, "sample_index").locator("input")
    box.fill("17")
    box.press("Enter")
    page.get_by_text("input x (sample 17)", exact=True).wait_for()
    harness.wait_idle(page)
    link = page.url

    context, other = new_page(browser)
    try:
        other.goto(link)
        other.get_by_text("input x (sample 17)", exact=True).wait_for()
        harness.wait_idle(other)
        assert other.get_by_role("heading", name="Latent map", exact=True).is_visible()
        assert trained_run.name in active_run(other) and newer_run not in active_run(other)
        assert harness.keyed(other, "sample_index").locator("input").input_value() == "17"
    finally:
        context.close()
