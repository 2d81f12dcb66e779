"""Latent map: the test set drawn in the page's own canvas (explorer/components/latent_map/).
Hovering a point shows that sample's input and reconstruction at once (compared with the
data, pixel for pixel); colouring by ELBO swaps the digit legend for an ELBO colour scale;
a click selects the sample without resetting zoom or pan; the keyboard moves a cursor."""

import io
import json

import numpy as np
from PIL import Image

from tests.e2e import harness
from tests.e2e.conftest import open_view
from trainer import load_dataset


def canvas_colours(page, canvas) -> set[tuple[int, int, int]]:
    """The distinct saturated colours the map shows, as a person sees them (a screenshot)."""
    rgb = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=int).reshape(-1, 3)
    saturated = rgb[rgb.max(1) - rgb.min(1) > 60]  # a point, not an axis or the background
    return {tuple(c) for c in (saturated // 16).tolist()}


def canvas_pixels(locator) -> np.ndarray:
    """The pixels a canvas holds, (H, W, 4) uint8, at its own resolution."""
    out = locator.evaluate("""c => ({w: c.width, h: c.height,
        data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)})""")
    return np.array(out["data"], dtype=np.uint8).reshape(out["h"], out["w"], 4)


def camera(canvas) -> dict:
    return canvas.evaluate("c => ({...c.latentMap.cam})")


def test_hover_shows_the_samples_input_and_reconstruction(page, app, trained_run, screenshot_dirs):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    chart = harness.keyed(page, "latent_map_chart")
    canvas = harness.in_page_map(chart)
    canvas.scroll_into_view_if_needed()
    cfg = json.loads((trained_run.path / "config.json").read_text())
    x_test = load_dataset(cfg["data"], cfg["train"]["seed"]).x_test.numpy()

    points = harness.sample_points(chart)
    assert len(points) == len(x_test), "one point per test sample"
    assert len(canvas_colours(page, canvas)) >= 5, "the points are not drawn in the digits' colours"
    legend = chart.locator(".vlm-legend").inner_text()
    assert "digit 0" in legend and "digit 9" in legend, legend

    thumb = page.locator('[aria-label="hovered sample"]')
    seen = set()
    for exclude in ({-1}, {-1, 0}):
        i = harness.isolated_point(points, exclude=exclude | seen)
        page.mouse.move(*points[i])
        thumb.wait_for(state="visible")
        assert thumb.evaluate("c => c.dataset.sample") == str(i)
        pixels = canvas_pixels(thumb)
        want = np.round(np.clip(x_test[i, 0], 0, 1) * 255).astype(int)  # (8, 8) grey
        assert pixels.shape[:2] == want.shape
        assert np.array_equal(pixels[:, :, 0].astype(int), want), f"thumbnail of sample {i} is not its input"
        recon = page.locator('[aria-label="hovered reconstruction"]')
        assert recon.is_visible() and not np.array_equal(canvas_pixels(recon), pixels)
        seen.add(i)
    assert page.get_by_text(f"sample {i}", exact=True).is_visible()
    harness.screenshot(page, "latent-map-hover", *screenshot_dirs)  # the README shows it

    page.mouse.move(5, 5)  # off the map: the tooltip goes
    assert not thumb.is_visible()
    harness.assert_no_traceback(page)


def test_colour_by_elbo_and_a_click_selects_without_resetting_the_zoom(page, app, trained_run):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    chart = harness.keyed(page, "latent_map_chart")
    canvas = harness.in_page_map(chart)
    canvas.scroll_into_view_if_needed()
    by_digit = canvas_colours(page, canvas)

    # Colour by ELBO: the digit legend gives way to an ELBO colour scale.
    harness.keyed(page, "color_by").click()
    page.get_by_role("option", name="ELBO", exact=True).click()
    page.get_by_role("img", name="colour scale of ELBO").wait_for()
    harness.wait_idle(page)
    legend = chart.locator(".vlm-legend").inner_text()
    assert "ELBO" in legend and "digit 0" not in legend, legend
    assert canvas_colours(page, canvas) != by_digit, "the points kept their colours"

    # Zoom in (wheel) about the middle and pan (drag).
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = camera(canvas)
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)
    page.mouse.move(cx - 40, cy - 20)
    page.mouse.down()
    page.mouse.move(cx + 20, cy + 10, steps=5)
    page.mouse.up()
    zoomed = camera(canvas)
    assert zoomed["scale"] > 1.5 * before["scale"] and zoomed["cx"] != before["cx"]

    # Click a point: the selected-sample panel follows, the zoom and pan stay.
    before_input = harness.image_digest(page, harness.captioned_image(page, "input x (sample 0)"))
    points = harness.sample_points(chart)
    i = harness.isolated_point(points, exclude={0})
    page.mouse.click(*points[i])
    page.get_by_text(f"input x (sample {i})", exact=True).wait_for()
    harness.wait_idle(page)
    shown = harness.captioned_image(page, f"input x (sample {i})")
    assert harness.image_digest(page, shown) != before_input, "the input image did not change"
    for name in (f"input x of test sample {i}", f"reconstruction f(mu(x)) of test sample {i}"):
        assert page.get_by_role("img", name=name, exact=True).count() == 1, f"no image named {name!r}"
    assert harness.keyed(page, "sample_index").locator("input").input_value() == str(i)
    assert f"sample={i}" in page.url
    assert camera(canvas) == zoomed, "the click reset the zoom or pan"
    assert harness.sample_points(chart)[i] == points[i], "the point moved"
    assert canvas.evaluate("c => c.latentMap.view.selected") == i  # the ring follows the server

    # The number input selects too; the map keeps its zoom through that rerun as well.
    field = harness.keyed(page, "sample_index").locator("input")
    field.fill("3")
    field.press("Enter")
    page.get_by_text("input x (sample 3)", exact=True).wait_for()
    harness.wait_idle(page)
    assert camera(canvas) == zoomed
    page.wait_for_function("() => document.querySelector('[aria-label=\"latent map\"]').latentMap.view.selected === 3")
    harness.assert_no_traceback(page)

    # The ELBO page follows the map's selection.
    page.mouse.click(*points[i])
    page.get_by_text(f"input x (sample {i})", exact=True).wait_for()
    harness.wait_idle(page)
    page.get_by_role("link", name="ELBO breakdown of this sample").click()
    page.get_by_role("heading", name="ELBO breakdown", exact=True).first.wait_for()
    harness.wait_idle(page)
    assert harness.keyed(page, "elbo_sample_index").locator("input").input_value() == str(i)


def test_the_keyboard_moves_a_cursor_over_the_map(page, app, trained_run):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    canvas = harness.in_page_map(harness.keyed(page, "latent_map_chart"))
    canvas.focus()
    decoded = page.locator('[aria-label="decoded at cursor"]')
    canvas.press("ArrowRight")
    decoded.wait_for(state="visible")
    first = canvas_pixels(decoded)
    for _ in range(6):
        canvas.press("Shift+ArrowUp")
    assert not np.array_equal(canvas_pixels(decoded), first), "the decoded image did not follow the cursor"
    scale = camera(canvas)["scale"]
    canvas.press("+")
    assert camera(canvas)["scale"] > scale
    canvas.press("0")  # fit the view again
    assert abs(camera(canvas)["scale"] - scale) < 1e-6 * scale
    harness.assert_no_traceback(page)


def test_non_image_data_shows_its_values_as_a_bar_strip(page, app):
    from trainer import RunConfig, fit

    path = app.runs_dir / "gmm-bars"
    if not (path / "model.safetensors").exists():
        cfg = RunConfig(data="gmm2d:n=400")
        cfg.model.hidden = [16]
        cfg.train.epochs, cfg.train.threads = 2, 1
        fit(cfg, path)
    open_view(page, app, "latent-map", "Latent map", run=path.name)
    chart = harness.keyed(page, "latent_map_chart")
    harness.in_page_map(chart).scroll_into_view_if_needed()
    points = harness.sample_points(chart)
    i = harness.isolated_point(points)
    page.mouse.move(*points[i])
    thumb = page.locator('[aria-label="hovered sample"]')
    thumb.wait_for(state="visible")
    assert page.get_by_text(f"sample {i}: x (blue), f(mu(x)) (red)", exact=True).is_visible()
    bars = canvas_pixels(thumb)
    assert bars.shape[:2] == (64, 168)
    blue, red = (bars[:, :, :3] == (99, 110, 250)).all(-1), (bars[:, :, :3] == (239, 85, 59)).all(-1)
    assert blue.any() and red.any(), "no bars for the input and its reconstruction"
    assert not page.locator('[aria-label="hovered reconstruction"]').is_visible()
    assert page.locator('[aria-label="decoded at cursor"]').is_visible()  # f(z) as bars too
    harness.assert_no_traceback(page)


def test_the_map_keeps_its_thumbnails_through_many_recolourings(page, app, trained_run):
    """Each colouring is a new points payload; after many, the map still draws every point and
    its thumbnails (the page forgets old payloads, never those the map uses)."""
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    chart = harness.keyed(page, "latent_map_chart")
    canvas = harness.in_page_map(chart)
    for option in ["ELBO", "recon", "KL", "z1", "z2", "none", "ELBO", "KL", "z1", "recon", "digit"]:
        harness.keyed(page, "color_by").click()
        page.get_by_role("option", name=option, exact=True).click()
        harness.wait_idle(page, quiet_s=0.2)
    page.wait_for_function("() => document.querySelector('.vlm-legend').innerText.includes('digit 9')")
    canvas.scroll_into_view_if_needed()
    points = harness.sample_points(chart)
    assert len(points) > 100
    i = harness.isolated_point(points)
    page.mouse.move(*points[i])
    thumb = page.locator('[aria-label="hovered sample"]')
    thumb.wait_for(state="visible")
    assert thumb.evaluate("c => c.dataset.sample") == str(i)
    harness.assert_no_traceback(page)
