"""Interpolate: the slider t, the decoded image and the small map with z(t) are drawn in the
page (explorer/components/interpolation). A drag redraws the image and moves z(t) on every
input event with no websocket frame sent; the release sends t (the URL, the numbers and the
profile's current-t line follow). Arrow keys move t. Endpoints are set by clicking codes on
the component's map, and switching lerp/slerp changes the strip and the path on the map."""

import re

from tests.e2e import harness
from tests.e2e.conftest import open_view

DECODED = "decoded image at t"  # the contract: <canvas aria-label="decoded image at t">


def endpoint(page, which: str) -> int:
    return int(harness.keyed(page, f"endpoint_{which}").locator("input").input_value())


def t_slider(page):
    """The contract's slider: a native <input type="range"> whose accessible name is t."""
    return page.get_by_role("slider", name="t", exact=True)


def decoded_canvas(page):
    return page.locator(f'canvas[aria-label="{DECODED}"]')


def path_map(page):
    return page.locator("canvas.vae-interp-mapcanvas")


def pixels(canvas) -> str:
    """What a canvas shows, as a PNG data: URL (equal strings: equal pixels)."""
    return canvas.evaluate("c => c.toDataURL('image/png')")


def strip_image(page):
    return page.locator('[data-testid="stImage"]').filter(
        has=page.get_by_text(re.compile(r"^t = 0\.00, "))).locator("img").first


def current_t_marks(page) -> list[float]:
    """Where the path profile's gold 'current t' line(s) are drawn."""
    return harness.keyed(page, "path_profile").locator(".js-plotly-plot").first.evaluate(
        "el => (el._fullLayout.shapes || []).filter(s => s.name === 'current t').map(s => s.x0)")


def count_sent_frames(page) -> list:
    """Every websocket frame the page sends from now on (register before page.goto)."""
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    return sent


def wait_url_t(page, t: str) -> None:
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('t') === '{t}'")


def test_a_drag_redraws_in_the_page_without_traffic_and_the_release_sends_t(page, app, trained_run):
    sent = count_sent_frames(page)
    open_view(page, app, "interpolate", "Interpolate", run=trained_run.name)
    slider, image, themap = t_slider(page), decoded_canvas(page), path_map(page)
    assert slider.evaluate("e => [e.tagName, e.type]") == ["INPUT", "range"]
    assert image.count() == 1 and image.evaluate("e => e.tagName") == "CANVAS"
    page.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
    assert slider.input_value() == "0.50" or slider.input_value() == "0.5"
    harness.wait_idle(page)
    metrics_before = harness.metrics(page)

    # Input events only (what a drag fires): every step draws new pixels, nothing is sent.
    before = len(sent)
    seen_image, seen_map = {pixels(image)}, {pixels(themap)}
    for value in ("0.10", "0.20", "0.30", "0.80"):
        slider.evaluate("(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }", value)
        assert image.get_attribute("data-frame") == str(round(float(value) * 100))
        seen_image.add(pixels(image))
        seen_map.add(pixels(themap))
    assert len(seen_image) == 5, "the decoded image did not change at every input event"
    assert len(seen_map) == 5, "z(t) did not move on the map at every input event"

    # A real mouse drag: down on the thumb, moves, the image follows while the button is held.
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    x_at = lambda t: box["x"] + 8 + t * (box["width"] - 16)  # noqa: E731 (the thumb's centre at t)
    slider.evaluate("e => { e.value = '0.5'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    page.mouse.move(x_at(0.5), y)
    page.mouse.down()
    shown = set()
    for t in (0.55, 0.65, 0.75, 0.85, 0.7):
        page.mouse.move(x_at(t), y, steps=3)
        shown.add(pixels(image))
    page.wait_for_timeout(500)  # anything the drag would send has had time to go
    assert len(sent) == before, f"{len(sent) - before} websocket frames were sent during the drag"
    assert len(shown) >= 4, "the decoded image did not follow the drag"

    # The release: t goes to the server once; the URL, the numbers and the profile follow.
    page.mouse.up()
    released = slider.input_value()
    assert abs(float(released) - 0.7) <= 0.03
    wait_url_t(page, f"{float(released):.2f}")
    harness.wait_idle(page)
    assert len(sent) > before, "the release sent nothing"
    page.get_by_role("heading", name=f"At t = {float(released):.2f}").wait_for()
    assert harness.metrics(page) != metrics_before
    marks = current_t_marks(page)
    assert marks and all(abs(x - float(released)) < 1e-9 for x in marks), marks
    assert slider.input_value() == released, "the rerun after the release moved the slider"
    harness.assert_no_traceback(page)
