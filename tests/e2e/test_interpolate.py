"""Interpolate: two endpoints clicked on the map, the slider moved with the keyboard changes
the decoded image, the URL's t and the profile's current-t line (the slider reruns only its
fragment), and switching lerp/slerp changes the strip of decodes."""

import re

from tests.e2e import harness
from tests.e2e.conftest import open_view


def endpoint(page, which: str) -> int:
    return int(harness.keyed(page, f"endpoint_{which}").locator("input").input_value())


def click_sample(page, chart, exclude: set[int]) -> int:
    """Click the most isolated test point of the map (not one in `exclude`); its index."""
    chart.locator("canvas").first.wait_for()
    chart.scroll_into_view_if_needed()
    points = harness.sample_points(chart)
    i = harness.isolated_point(points, exclude)
    page.mouse.click(*points[i])
    return i


def decoded_image(page):
    return page.locator('[data-testid="stImage"]').filter(
        has=page.get_by_text(re.compile(r"^f\(z\(t\)\), the decoder's mean image at t = "))).locator("img").first


def strip_image(page):
    return page.locator('[data-testid="stImage"]').filter(
        has=page.get_by_text(re.compile(r"^t = 0\.00, "))).locator("img").first


def current_t_marks(page) -> list[float]:
    """Where the path profile's gold 'current t' line(s) are drawn."""
    return harness.keyed(page, "path_profile").locator(".js-plotly-plot").first.evaluate(
        "el => (el._fullLayout.shapes || []).filter(s => s.name === 'current t').map(s => s.x0)")


def test_interpolate_endpoints_keyboard_slider_and_path(page, app, trained_run, screenshot_dirs):
    open_view(page, app, "interpolate", "Interpolate", run=trained_run.name)
    chart = harness.keyed(page, "interp_map_chart")

    # Endpoints: a click on the map sets A, the next click sets B.
    a = click_sample(page, chart, exclude={endpoint(page, "a"), endpoint(page, "b")})
    page.wait_for_function(f"() => document.querySelector('.st-key-endpoint_a input').value === '{a}'")
    harness.wait_idle(page)
    b = click_sample(page, chart, exclude={a, endpoint(page, "b")})
    page.wait_for_function(f"() => document.querySelector('.st-key-endpoint_b input').value === '{b}'")
    harness.wait_idle(page)
    assert (endpoint(page, "a"), endpoint(page, "b")) == (a, b)
    assert f"a={a}" in page.url and f"b={b}" in page.url
    names = [t["name"] for t in harness.plotly_traces(chart)]
    assert "endpoint A" in names and "endpoint B" in names and "path (lerp)" in names

    # The slider, moved with the keyboard: the decoded image at t changes.
    page.get_by_role("heading", name="Decoded at t = 0.50").wait_for()
    before = harness.image_digest(page, decoded_image(page))
    slider = harness.keyed(page, "interp_t").get_by_role("slider")
    slider.focus()
    for _ in range(5):
        slider.press("ArrowLeft")
    page.get_by_role("heading", name="Decoded at t = 0.45").wait_for()
    harness.wait_idle(page)
    assert slider.evaluate("e => e.value") == "0.45"
    after = harness.image_digest(page, decoded_image(page))
    assert after != before, "the decoded image did not change when t moved from 0.50 to 0.45"
    assert "t=0.45" in page.url  # written by the slider's fragment, which app.py does not wrap
    marks = current_t_marks(page)
    assert marks and all(abs(x - 0.45) < 1e-9 for x in marks), f"the profile marks t at {marks}, not 0.45"
    slider.press("End")
    page.get_by_role("heading", name="Decoded at t = 1.00").wait_for()
    harness.wait_idle(page)
    at_b = harness.image_digest(page, decoded_image(page))
    assert at_b not in (before, after)

    # lerp -> slerp: the strip of decodes changes, and so does the path on the map.
    strip_lerp = harness.image_digest(page, strip_image(page))
    harness.keyed(page, "interp_path").get_by_text("slerp", exact=True).click()
    page.wait_for_function("() => location.search.includes('path=slerp')")
    harness.wait_idle(page)
    assert harness.keyed(page, "interp_path").get_by_role("radio", name="slerp").is_checked()
    strip_slerp = harness.image_digest(page, strip_image(page))
    assert strip_slerp != strip_lerp, "switching lerp -> slerp did not change the strip"
    assert "path (slerp)" in [t["name"] for t in harness.plotly_traces(chart)]
    harness.assert_no_traceback(page)
    harness.screenshot(page, "interpolate")
