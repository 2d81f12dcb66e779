"""Decode at the cursor: the page runs the decoder itself (map.js, from the weights
explorer/services/inpage.py sends) and agrees with torch; moving over the map redraws f(z)
for the z under the cursor, on the latent plane (d = 2) or on the plane of the first two
principal components through the mean of the codes (d > 2)."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from tests.e2e import harness
from tests.e2e.conftest import open_view
from tests.e2e.test_latent_map import canvas_pixels
from trainer import RunConfig, fit, load_run
from trainer.data import load_dataset

from explorer.services import explore


@pytest.fixture(scope="module")
def run_4d(app):
    """A short 4-D digits run beside the default one (mlp, Bernoulli: the page's sigmoid)."""
    path = app.runs_dir / "digits-4d-cursor"
    if not (path / "model.safetensors").exists():
        cfg = RunConfig(data="digits")
        cfg.model.latent_dim, cfg.model.hidden, cfg.model.likelihood = 4, [64], "bernoulli"
        cfg.train.epochs, cfg.train.threads = 3, 1
        fit(cfg, path)
    return path


def decoded_under(page, canvas, sx: float, sy: float) -> tuple[np.ndarray, list[float]]:
    """Move the mouse to (sx, sy) of the viewport: the decoded-at-cursor pixels (grey, (H, W))
    and the map point (u, v) the page says is there."""
    page.mouse.move(sx, sy)
    decoded = page.locator('[aria-label="decoded at cursor"]')
    decoded.wait_for(state="visible")
    box = canvas.bounding_box()
    uv = canvas.evaluate("(c, p) => c.latentMap.toWorld(p[0], p[1])", [sx - box["x"], sy - box["y"]])
    return canvas_pixels(decoded)[:, :, 0].astype(int), uv


def test_the_pages_decoder_matches_torch_and_follows_the_mouse(page, app, trained_run):
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    canvas = harness.in_page_map(harness.keyed(page, "latent_map_chart"))
    canvas.scroll_into_view_if_needed()
    run = load_run(trained_run.path)

    z = np.random.default_rng(0).normal(size=(100, 2)) * 2.5
    in_page = np.array(canvas.evaluate("(c, zs) => zs.map(z => c.latentMap.decode(z))", z.tolist()))
    torch_mean = run.decode(z).numpy().reshape(100, -1)
    assert in_page.shape == torch_mean.shape
    assert np.abs(in_page - torch_mean).max() <= 1e-4

    box = canvas.bounding_box()
    shown = []
    for fx, fy in ((0.3, 0.3), (0.7, 0.6), (0.5, 0.8)):
        pixels, uv = decoded_under(page, canvas, box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        want = np.round(np.clip(run.decode(np.array([uv])).numpy()[0, 0], 0, 1) * 255)
        assert np.abs(pixels - want).max() <= 1, f"f(z) at z = {uv} is not what torch decodes there"
        shown.append(pixels)
    assert not np.array_equal(shown[0], shown[1]), "the decoded image did not change with the cursor"
    assert page.get_by_text("f(z) at z = (", exact=False).first.is_visible()
    harness.assert_no_traceback(page)


def test_above_two_dimensions_the_cursor_decodes_on_the_principal_plane(page, app, run_4d):
    open_view(page, app, "latent-map", "Latent map", run=run_4d.name)
    canvas = harness.in_page_map(harness.keyed(page, "latent_map_chart"))
    canvas.scroll_into_view_if_needed()
    run = load_run(run_4d)
    mu = run.encode(load_dataset("digits", run.config.train.seed).x_test).mu.numpy().astype(np.float64)
    pca = PCA(n_components=2).fit(mu)  # the plane: mean of the codes, first two components

    box = canvas.bounding_box()
    pixels, uv = decoded_under(page, canvas, box["x"] + 0.4 * box["width"], box["y"] + 0.55 * box["height"])
    z = pca.mean_ + np.array(uv) @ pca.components_
    want = np.round(np.clip(run.decode(z[None]).numpy()[0, 0], 0, 1) * 255)
    assert np.abs(pixels - want).max() <= 1
    xy = explore.project(mu, "PCA").xy  # and the points sit where PCA puts them
    points = harness.sample_points(harness.keyed(page, "latent_map_chart"))
    i = harness.isolated_point(points)
    u, v = canvas.evaluate("(c, p) => c.latentMap.toWorld(p[0], p[1])",
                           [points[i][0] - box["x"], points[i][1] - box["y"]])
    assert np.allclose([u, v], xy[i], atol=1e-3)
    assert "principal components" in page.locator("body").inner_text()

    # t-SNE: no plane of codes to decode on, but hovering a point still shows that sample.
    page.get_by_role("radio", name="t-SNE").check(force=True)
    page.wait_for_function("() => document.querySelector('[aria-label=\"latent map\"]').latentMap.view.axes[0] === 't-SNE 1'",
                           timeout=120_000)
    harness.wait_idle(page)
    chart = harness.keyed(page, "latent_map_chart")
    points = harness.sample_points(chart)
    i = harness.isolated_point(points)
    page.mouse.move(*points[i])
    thumb = page.locator('[aria-label="hovered sample"]')
    thumb.wait_for(state="visible")
    x = load_dataset("digits", run.config.train.seed).x_test.numpy()
    assert np.array_equal(canvas_pixels(thumb)[:, :, 0].astype(int), np.round(x[i, 0] * 255).astype(int))
    assert not page.locator('[aria-label="decoded at cursor"]').is_visible()
    harness.assert_no_traceback(page)


def test_a_conv_decoder_is_looked_up_in_its_grid_of_decodes(page, app):
    path = app.runs_dir / "shapes-conv-cursor"
    if not (path / "model.safetensors").exists():
        cfg = RunConfig(data="shapes:n=300,size=16")
        cfg.model.arch, cfg.model.likelihood, cfg.model.conv_channels = "conv", "bernoulli", [8, 8]
        cfg.train.epochs, cfg.train.threads = 1, 1
        fit(cfg, path)
    open_view(page, app, "latent-map", "Latent map", run=path.name)
    canvas = harness.in_page_map(harness.keyed(page, "latent_map_chart"))
    canvas.scroll_into_view_if_needed()
    run = load_run(path)
    dec = canvas.evaluate("c => c.latentMap.samples.meta.decoder")
    assert dec["kind"] == "grid"
    box = canvas.bounding_box()
    pixels, (u, v) = decoded_under(page, canvas, box["x"] + 0.45 * box["width"], box["y"] + 0.5 * box["height"])
    n, lo, hi = dec["n"], np.array(dec["lo"]), np.array(dec["hi"])
    cell = np.clip(np.round((np.array([u, v]) - lo) / (hi - lo) * (n - 1)), 0, n - 1)  # the nearest grid code
    want = np.round(np.clip(run.decode((lo + cell * (hi - lo) / (n - 1))[None]).numpy()[0, 0], 0, 1) * 255)
    assert pixels.shape == (16, 16) and np.abs(pixels - want).max() <= 1
    harness.assert_no_traceback(page)
