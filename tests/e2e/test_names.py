"""Issue 15 in a real browser, on a server of its own whose runs folder holds a run on a
user's CSV (scikit-learn's wine table, label column `target` of class names; tests/conftest.py
wine_run): the latent map's legend and hovers use the file's names, and the Runs page's
export -> import carries the run to another runs folder with the same numbers."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e import harness
from tests.e2e.conftest import open_view

CLASSES = ("class_0", "class_1", "class_2")
NUMBERS = ("epochs", "test ELBO", "recon", "KL", "log p(x)")  # the Runs table's columns compared


@pytest.fixture(scope="module")
def server(tmp_path_factory, wine_run):
    base = tmp_path_factory.mktemp("names")
    runs = base / "runs"
    runs.mkdir()
    shutil.copytree(wine_run, runs / wine_run.name, ignore=shutil.ignore_patterns(".lock", "log_px.json"))
    (base / "elsewhere").mkdir()  # another runs folder, empty: where the run is imported
    app = harness.start_app(runs, base / "streamlit.log")
    yield app
    harness.stop_app(app)



def the_csv(run_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The data file as the user wrote it: (feature names, values (N, 13), class per row)."""
    with open(json.loads((run_dir / "config.json").read_text())["data"], newline="") as f:
        rows = list(csv.reader(f))
    j = rows[0].index("target")
    drop = lambda r: [v for k, v in enumerate(r) if k != j]  # noqa: E731
    return drop(rows[0]), np.array([[float(v) for v in drop(r)] for r in rows[1:]]), [r[j] for r in rows[1:]]


def test_the_latent_map_names_the_label_its_classes_and_the_features(server, page):
    from trainer import load_run

    run_dir = server.runs_dir / "wine-names"
    features, values, classes = the_csv(run_dir)
    x_test = load_run(run_dir).load_data().x_test.numpy()

    open_view(page, server, "latent-map", "Latent map", run="wine-names")
    chart = harness.keyed(page, "latent_map_chart")
    harness.in_page_map(chart).scroll_into_view_if_needed()
    legend = chart.locator(".vlm-legend").inner_text()
    assert legend.split()[0] == "target:" and all(c in legend for c in CLASSES), legend

    points = harness.sample_points(chart)
    caption = page.locator(".vlm-tip-sample figcaption").first
    said = page.locator(".vlm-hover-label")
    thumb = page.locator('[aria-label="hovered sample"]')
    seen: set[int] = set()
    for _ in range(2):
        i = harness.isolated_point(points, exclude={-1} | seen)
        page.mouse.move(*points[i])
        thumb.wait_for(state="visible")
        row = int(np.argmin(np.abs(values - x_test[i]).sum(1)))  # the CSV's row of this sample
        assert caption.inner_text() == f"sample {i}: x (blue), f(mu(x)) (red)"
        assert said.inner_text() == f"target: {classes[row]}"
        seen.add(i)
    names = page.locator(".vlm-bars-names").inner_text()
    assert names == f"features: {', '.join(features[:3])}, ..., {features[-1]} ({len(features)}); each on its own scale"
    title = thumb.get_attribute("title")
    assert all(f"{f}: x = " in title for f in features), title  # every bar named in its tooltip
    # Each bar drawn on its feature's own range (wine's units differ 1000-fold): the painted
    # height of every bar, read off the canvas, is (v - lo) / (hi - lo) of its 60 px.
    drawn = thumb.evaluate("""(c, bars) => {
        const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, bw = c.width / bars;
        return Array.from({length: bars}, (_, b) => {
            const x = Math.floor(b * bw + (bw - 1) / 2);
            let n = 0;
            for (let y = 0; y < c.height; y++) n += px[4 * (y * c.width + x) + 3] > 127 ? 1 : 0;
            return n;
        });
    }""", 2 * len(features))
    expected = expected_bar_heights(run_dir, i)
    assert np.abs(np.array(drawn) - expected).max() <= 1.5, (drawn, expected.round(1).tolist())
    assert (np.array(drawn) >= 4).sum() >= 2 * len(features) // 2  # most bars visibly tall, not flat lines
    harness.assert_no_traceback(page)


def test_the_selected_samples_bars_name_every_feature_in_view(server, page):
    """The selected sample's input/reconstruction bars (plotly, the narrow panel): a row per
    feature in the file's order, each name drawn whole or shortened with an ellipsis, inside
    the chart and clear of the legend (before: rotated names, their first halves under it)."""
    run_dir = server.runs_dir / "wine-names"
    features = the_csv(run_dir)[0]
    open_view(page, server, "latent-map", "Latent map", run="wine-names", sample=4)
    chart = harness.keyed(page, "vec_4")
    chart.locator(".ytick text").first.wait_for()
    ticks = chart.locator(".ytick text")
    names = [t.text_content() for t in ticks.all()]
    assert len(names) == len(features)
    for name, feature in zip(names, features):
        assert name == feature or (name.endswith("\u2026") and feature.startswith(name[:-1])), (name, feature)
    frame = chart.bounding_box()
    legend = chart.locator(".legend").bounding_box()
    for tick in ticks.all():
        box = tick.bounding_box()
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"], "inside the chart"
        assert box["y"] >= legend["y"] + legend["height"] - 1, "below the legend, not under it"


def test_interpolate_labels_its_bars_only_where_the_labels_fit(server, page):
    """Wine's 13 long names ("od280/od315_of_diluted_wines = 0.12") do not fit a bar's slot:
    the canvas shows the values alone (or nothing), never overlapping names; its tooltip
    still names every bar."""
    features = the_csv(server.runs_dir / "wine-names")[0]
    open_view(page, server, "interpolate", "Interpolate", run="wine-names")
    page.wait_for_function("() => document.querySelector('.vae-interp').dataset.pathId")
    bars = page.get_by_role("img", name="decoded values at t", exact=True)
    bars.wait_for()
    assert bars.get_attribute("data-bar-labels") in ("values", "none")
    title = bars.get_attribute("title")
    assert title.startswith("decoded values at t, left to right, each on its own scale:")
    assert all(f"{f} = " in title for f in features), title
    harness.assert_no_traceback(page)


def expected_bar_heights(run_dir: Path, i: int) -> np.ndarray:
    """The heights (px) map.js's drawBars gives test sample i's bars, x and f(mu(x)) per
    feature, from the payload the server sends (computed here the same way)."""
    from explorer.services import explore, inpage
    from trainer import load_run

    run = load_run(run_dir)
    enc = explore.encode_test(run)
    _, meta, arrays = inpage.unpack(inpage.samples_payload(run, enc, run.decode(enc.mu).numpy()))
    slot = int(np.flatnonzero(arrays["atlas_index"] == i)[0])
    b = meta["bars"]
    heights = []
    for j in range(b):
        lo, hi = meta["bar_ranges"][j]
        base = min(max(0.0, lo), hi)
        for series in (arrays["bars_x"], arrays["bars_recon"]):
            heights.append(max(1.0, abs(series[slot, j] - base) / (hi - lo) * 60))
    return np.array(heights)


def runs_table(page) -> dict[str, dict]:
    """The Runs table's rows by run."""
    return {r["run"]: r for r in harness.table_rows(harness.keyed(page, "runs_table"))}


def wait_log_px(page, name: str) -> str:
    deadline = time.monotonic() + harness.PAGE_S
    while time.monotonic() < deadline:
        harness.wait_idle(page)
        shown = runs_table(page).get(name, {}).get("log p(x)")
        if shown:
            return shown
        time.sleep(0.3)
    raise AssertionError(f"log p(x) of {name} not shown: {runs_table(page).get(name)}")


def test_a_run_exported_and_imported_elsewhere_keeps_its_numbers(server, page):
    from trainer import evaluate_run, load_run

    here, elsewhere = server.runs_dir / "wine-names", server.runs_dir.parent / "elsewhere" / "wine-names"
    open_view(page, server, "runs", "Runs", run="wine-names")
    wait_log_px(page, "wine-names")
    before = {k: runs_table(page)["wine-names"][k] for k in NUMBERS}
    with page.expect_download() as info:
        page.get_by_role("button", name="wine-names as one zip").click()
    bundle = Path(info.value.path()).read_bytes()

    # the sidebar's runs folder: another one, empty; the Runs page's importer takes the zip
    box = harness.keyed(page, "runs_dir").locator("input")
    box.fill(str(elsewhere.parent))
    box.press("Enter")
    page.get_by_text("No runs yet. Start one on the").wait_for()
    harness.keyed(page, "import_bundle").locator("input[type=file]").set_input_files(
        files=[{"name": "wine-names.zip", "mimeType": "application/zip", "buffer": bundle}])
    said = page.get_by_text("Imported wine-names: it is now the active run.")
    said.wait_for(timeout=60_000)
    wait_log_px(page, "wine-names")  # the page reran on its own to estimate the new run's log p(x)
    harness.wait_idle(page)
    assert said.is_visible(), "the import's message stays while its file is in the uploader"
    after = {k: runs_table(page)["wine-names"][k] for k in NUMBERS}
    assert after == before and all(before.values()), "the imported run's numbers differ from the exported one's"
    assert (elsewhere / "model.safetensors").read_bytes() == (here / "model.safetensors").read_bytes()
    assert json.loads((elsewhere / "data.json").read_text()) == json.loads((here / "data.json").read_text())
    assert evaluate_run(load_run(elsewhere), "test", k=20) == evaluate_run(load_run(here), "test", k=20)
    harness.assert_no_traceback(page)
