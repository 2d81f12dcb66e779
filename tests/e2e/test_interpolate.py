"""Interpolate: the slider t, the decoded image and the small map with z(t) are drawn in the
page (explorer/components/interpolation). A drag redraws the image and moves z(t) on every
input event with no websocket frame sent; the release sends t (the URL, the numbers and the
profile's current-t line follow). Arrow keys move t. Endpoints are set by clicking codes on
the component's map, and switching lerp/slerp changes the strip and the path on the map."""

import re
import shutil

import numpy as np
import pytest

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


def decoded_frames(run_dir, a: int, b: int, method: str) -> np.ndarray:
    """The path's frames (T, H, W, C) uint8 as the page should show them, computed in this
    process from the run folder (the test set encoded, z(t) decoded)."""
    from explorer.services import explore, path_payload
    from trainer import load_run

    run = load_run(run_dir)
    enc = explore.encode_test(run)
    return path_payload.frames_uint8(explore.path_frames(run, enc.mu[a], enc.mu[b], method).images)


def shown_frame(canvas, h: int, w: int) -> np.ndarray:
    """The grey level the canvas shows at the centre of each of the image's h x w pixels."""
    return np.array(canvas.evaluate("""(c, [h, w]) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
            const x = Math.floor((j + 0.5) * c.width / w), y = Math.floor((i + 0.5) * c.height / h);
            out.push(d[4 * (y * c.width + x)]);
        }
        return out;
    }""", [h, w]), dtype=np.uint8).reshape(h, w)


def count_sent_frames(page, received: list | None = None) -> list:
    """Every websocket frame the page sends from now on (register before page.goto); the
    frames it receives go to `received` if given."""
    sent = []

    def watch(ws):
        ws.on("framesent", lambda payload: sent.append(payload))
        if received is not None:
            ws.on("framereceived", lambda payload: received.append(payload))

    page.on("websocket", watch)
    return sent


def wait_url_t(page, t: str) -> None:
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('t') === '{t}'")


def test_a_drag_redraws_in_the_page_without_traffic_and_the_release_sends_t(page, app, trained_run):
    received = []
    sent = count_sent_frames(page, received)
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
    # ... and what it shows is the decoder's mean at z(0.80), computed here from the run itself
    expected = decoded_frames(trained_run.path, endpoint(page, "a"), endpoint(page, "b"), "lerp")[80]
    shown = shown_frame(image, expected.shape[0], expected.shape[1])
    assert np.abs(shown.astype(int) - expected[..., 0].astype(int)).max() <= 1
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
    path_id = page.locator(".vae-interp").get_attribute("data-path-id").encode()
    assert any(path_id in bytes(f, "utf-8") if isinstance(f, str) else path_id in f for f in received)
    got = len(received)
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
    again = [f for f in received[got:] if path_id in (f.encode() if isinstance(f, str) else f)]
    assert not again, "the release made the server send the path's decoded steps again"
    harness.assert_no_traceback(page)


def test_arrow_keys_move_t_and_each_key_press_is_sent(page, app, trained_run):
    open_view(page, app, "interpolate", "Interpolate", run=trained_run.name, t="0.50")
    slider, image = t_slider(page), decoded_canvas(page)
    page.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
    before = pixels(image)
    slider.focus()
    for _ in range(5):
        slider.press("ArrowLeft")
    assert slider.input_value() == "0.45" and image.get_attribute("data-frame") == "45"
    after = pixels(image)
    assert after != before, "the decoded image did not change when t moved from 0.50 to 0.45"
    wait_url_t(page, "0.45")  # a key press is a whole move: input, then change (sent)
    page.get_by_role("heading", name="At t = 0.45").wait_for()
    harness.wait_idle(page)
    marks = current_t_marks(page)
    assert marks and all(abs(x - 0.45) < 1e-9 for x in marks), f"the profile marks t at {marks}, not 0.45"
    slider.press("End")
    wait_url_t(page, "1.00")
    harness.wait_idle(page)
    assert slider.input_value() == "1" and image.get_attribute("data-frame") == "100"
    assert pixels(image) not in (before, after)

    # Another page and back: the page's t comes back with it.
    page.get_by_role("link", name="Latent map").click()
    page.get_by_role("heading", name="Latent map", exact=True).wait_for()
    harness.wait_idle(page)
    page.get_by_role("link", name="Interpolate").click()
    page.get_by_role("heading", name="At t = 1.00").wait_for()
    harness.wait_idle(page)
    assert t_slider(page).input_value() == "1" and decoded_canvas(page).get_attribute("data-frame") == "100"
    harness.assert_no_traceback(page)


def click_sample(page, exclude: set[int]) -> int:
    """Click the most isolated code of the component's map (not one in `exclude`); its index."""
    themap = path_map(page)
    themap.scroll_into_view_if_needed()
    points = {int(k): tuple(v) for k, v in themap.evaluate("c => c.samplePositions()").items()}
    i = harness.isolated_point(points, exclude)
    page.mouse.click(*points[i])
    return i


def test_endpoints_clicked_on_the_map_and_lerp_to_slerp(page, app, trained_run, screenshot_dirs):
    open_view(page, app, "interpolate", "Interpolate", run=trained_run.name)
    page.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
    first_path = page.locator(".vae-interp").get_attribute("data-path-id")

    # A click on a code sets A, the next click sets B; the path is decoded anew for them.
    a = click_sample(page, exclude={endpoint(page, "a"), endpoint(page, "b")})
    page.wait_for_function(f"() => document.querySelector('.st-key-endpoint_a input').value === '{a}'")
    harness.wait_idle(page)
    b = click_sample(page, exclude={a, endpoint(page, "b")})
    page.wait_for_function(f"() => document.querySelector('.st-key-endpoint_b input').value === '{b}'")
    harness.wait_idle(page)
    assert (endpoint(page, "a"), endpoint(page, "b")) == (a, b)
    assert f"a={a}" in page.url and f"b={b}" in page.url
    lerp_path = page.locator(".vae-interp").get_attribute("data-path-id")
    assert lerp_path != first_path, "the component was not sent the new path"
    lerp_map = pixels(path_map(page))

    # lerp -> slerp: the strip of decodes changes, and so does the path on the map.
    strip_lerp = harness.image_digest(page, strip_image(page))
    harness.keyed(page, "interp_path").get_by_text("slerp", exact=True).click()
    page.wait_for_function("() => location.search.includes('path=slerp')")
    page.wait_for_function(f"() => document.querySelector('.vae-interp').dataset.pathId !== '{lerp_path}'")
    harness.wait_idle(page)
    assert harness.keyed(page, "interp_path").get_by_role("radio", name="slerp").is_checked()
    assert harness.image_digest(page, strip_image(page)) != strip_lerp, "switching lerp -> slerp did not change the strip"
    assert pixels(path_map(page)) != lerp_map, "the map did not draw the slerp path"
    assert "slerp path" in page.locator(".vae-interp-mapcaption").inner_text()

    # Every image has an accessible name.
    unnamed = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid="stMain"] img, '
        + '[data-testid="stMain"] canvas[role="img"], .vae-interp canvas'))
        .filter(e => !(e.getAttribute('aria-label') || e.getAttribute('alt') || '').trim()).map(e => e.outerHTML.slice(0, 80))""")
    assert not unnamed, unnamed
    harness.assert_no_traceback(page)
    harness.screenshot(page, "interpolate")


@pytest.fixture
def points_run(app):
    """A small run on 2-D points that are not images (gmm2d), removed afterwards so that the
    default run stays the newest for the other tests."""
    from trainer import RunConfig, fit

    cfg = RunConfig(data="gmm2d:n=300")
    cfg.model.hidden = [32]
    cfg.train.epochs, cfg.train.threads = 2, 1
    path = app.runs_dir / "interp-points"
    fit(cfg, path)
    yield path.name
    shutil.rmtree(path, ignore_errors=True)


def test_data_that_is_not_an_image_is_drawn_as_bars_that_follow_the_drag(page, app, points_run):
    sent = count_sent_frames(page)
    open_view(page, app, "interpolate", "Interpolate", run=points_run)
    page.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
    harness.wait_idle(page)
    bars = page.get_by_role("img", name="decoded values at t", exact=True)
    assert bars.count() == 1 and decoded_canvas(page).count() == 0
    assert bars.get_attribute("data-bar-labels") == "names and values"  # "x1 = 0.12": two short labels fit
    before = len(sent)
    seen = {pixels(bars)}
    for value in ("0.00", "0.30", "0.60", "1.00"):
        t_slider(page).evaluate("(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }",
                                value)
        seen.add(pixels(bars))
    page.wait_for_timeout(300)
    assert len(seen) >= 4 and len(sent) == before
    t_slider(page).evaluate("e => e.dispatchEvent(new Event('change', {bubbles: true}))")
    wait_url_t(page, "1.00")
    page.get_by_role("heading", name="At t = 1.00").wait_for()
    harness.wait_idle(page)
    harness.assert_no_traceback(page)
