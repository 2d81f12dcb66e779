"""Latent map: the test set drawn as points in a WebGL canvas; colouring by ELBO swaps the
digit legend for an ELBO colour bar; clicking a point shows that sample's input and
reconstruction."""

import io

import numpy as np
from PIL import Image

from tests.e2e import harness
from tests.e2e.conftest import open_view


def plot_area_colours(page, chart) -> set[tuple[int, int, int]]:
    """The distinct saturated colours inside the chart's plotting area, as a person sees them
    (a screenshot of the area: WebGL points included, axes and white background excluded)."""
    box = chart.locator(".js-plotly-plot").first.evaluate("""el => {
        const L = el._fullLayout, b = el.getBoundingClientRect();
        return {x: b.left + L.xaxis._offset, y: b.top + L.yaxis._offset,
                width: L.xaxis._length, height: L.yaxis._length}; }""")
    rgb = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB"), dtype=int).reshape(-1, 3)
    saturated = rgb[rgb.max(1) - rgb.min(1) > 60]  # a point, not grid, axis or background
    return {tuple(c) for c in (saturated // 16).tolist()}


def test_latent_map_points_colour_by_elbo_and_select_a_point(page, app, trained_run):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    chart = harness.keyed(page, "latent_map_chart")
    chart.locator("canvas").first.wait_for()
    chart.scroll_into_view_if_needed()

    # Points drawn with WebGL, one per test sample, in several colours (one per digit).
    canvases = chart.locator("canvas")
    assert canvases.count() > 0
    assert any(canvases.nth(i).evaluate("c => !!(c.getContext('webgl2') || c.getContext('webgl'))")
               for i in range(canvases.count())), "no WebGL canvas in the latent map"
    points = harness.sample_points(chart)
    assert len(points) > 100
    by_digit = plot_area_colours(page, chart)
    assert len(by_digit) >= 5, "the points are not drawn in the digits' colours"
    legend = harness.legend_text(chart)
    assert "digit 0" in legend and "digit 9" in legend, legend
    harness.screenshot(page, "latent-map-digit")

    # Colour by ELBO: the digit legend gives way to an ELBO colour bar.
    harness.keyed(page, "color_by").click()
    page.get_by_role("option", name="ELBO", exact=True).click()
    page.locator(".st-key-latent_map_chart .colorbar").first.wait_for()
    harness.wait_idle(page)
    legend = harness.legend_text(chart)
    assert "ELBO" in legend and "digit 0" not in legend, legend
    bars = [t["colorbar"] for t in harness.plotly_traces(chart) if t["colorbar"] is not None]
    assert bars == ["ELBO"], bars
    assert plot_area_colours(page, chart) != by_digit, "the points kept their colours"
    assert "run=" in page.url and "view=latent-map" in page.url
    harness.screenshot(page, "latent-map-elbo")

    # Select a point by clicking it: its input and reconstruction are shown.
    before_input = harness.image_digest(page, harness.captioned_image(page, "input x (sample 0)"))
    chart.scroll_into_view_if_needed()
    points = harness.sample_points(chart)
    i = harness.isolated_point(points, exclude={0})
    page.mouse.click(*points[i])
    caption = page.get_by_text(f"input x (sample {i})", exact=True)
    caption.wait_for()
    harness.wait_idle(page)
    shown = harness.captioned_image(page, f"input x (sample {i})")
    recon = harness.captioned_image(page, "reconstruction f(mu(x))")
    assert shown.is_visible() and recon.is_visible()
    assert harness.image_digest(page, shown) != before_input, "the input image did not change"
    assert harness.image_digest(page, recon) != harness.image_digest(page, shown)
    assert harness.keyed(page, "sample_index").locator("input").input_value() == str(i)
    assert f"sample={i}" in page.url
    harness.assert_no_traceback(page)
