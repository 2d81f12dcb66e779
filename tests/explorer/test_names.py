"""Names kept end to end (issue 15, item 3): a CSV's column names, its label column's name and
its class names reach the latent map (colour option, legend, hovers, the selected sample's
bars), Interpolate, Generate, the codes CSV, and every figure's PNG file name.

The data are scikit-learn's wine table as a user writes it (tests/conftest.py wine_run); what
the pages show is checked against the CSV file itself, read here with the csv module."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from explorer import charts
from explorer.services import explore, exports, inpage
from explorer_helpers import array, assert_clean, interpolation_message, latent_map, plotly_specs
from trainer import load_run

CLASSES = ["class_0", "class_1", "class_2"]


def read_csv(run_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The run's data file as the user wrote it: (feature names, values (N, 13), class per row)."""
    spec = json.loads((run_dir / "config.json").read_text())["data"]
    with open(spec, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    j = header.index("target")
    features = [h for k, h in enumerate(header) if k != j]
    values = np.array([[float(v) for k, v in enumerate(r) if k != j] for r in body])
    return features, values, [r[j] for r in body]


def class_of_test_samples(run_dir: Path, x_test: np.ndarray) -> list[str]:
    """Each test sample's class as the CSV names it, found by its row of values (wine's rows
    are distinct), not through the trainer's label coding."""
    _, values, classes = read_csv(run_dir)
    out = []
    for x in np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1):
        row = np.flatnonzero(np.all(np.abs(values - x) <= 1e-4 * np.maximum(1.0, np.abs(values)), axis=1))
        assert len(row) == 1, f"{len(row)} rows of the CSV match a test sample"
        out.append(classes[row[0]])
    return out


@pytest.fixture(scope="module")
def enc(wine_run) -> explore.Encoded:
    return explore.encode_test(load_run(wine_run))


def test_the_encoded_test_set_carries_the_files_names(wine_run, enc):
    features, _, _ = read_csv(wine_run)
    assert enc.feature_names == features and explore.feature_names(enc) == features
    assert enc.label_names == ["target"] and enc.class_names == CLASSES
    assert explore.color_options(enc)[0] == "target"
    assert explore.category_names("target", enc) == {0.0: "class_0", 1.0: "class_1", 2.0: "class_2"}
    _, discrete = explore.color_values(enc, "target")
    assert discrete


def test_the_map_payloads_name_the_label_its_categories_and_the_features(wine_run, enc):
    run = load_run(wine_run)
    values, discrete = explore.color_values(enc, "target")
    blob = inpage.points_payload(explore.project(enc.mu).xy, values, discrete, "target", list(charts.CATEGORY_COLORS),
                                 explore.category_names("target", enc))
    _, meta, arrays = inpage.unpack(blob)
    legend = meta["legend"]
    assert legend["kind"] == "categories" and legend["name"] == "target"
    assert [item["label"] for item in legend["items"]] == CLASSES
    # the hover names each point's category: the legend item of its class in the CSV
    truth = class_of_test_samples(wine_run, enc.x)
    hovered = [legend["items"][c]["hover"] for c in arrays["category"]]
    assert hovered == [f"target: {truth[i]}" for i in arrays["index"]]
    # a colour scale's hover names the value
    _, meta, arrays = inpage.unpack(inpage.points_payload(enc.mu[:, :2], enc.elbo, False, "ELBO", ["#000000"]))
    assert meta["legend"]["name"] == "ELBO" and "category" not in arrays
    np.testing.assert_allclose(arrays["value"], enc.elbo[arrays["index"]], rtol=1e-6)

    _, meta, _ = inpage.unpack(inpage.samples_payload(run, enc, run.decode(enc.mu).numpy()))
    assert meta["feature_names"] == read_csv(wine_run)[0]  # the bars of the hover, by name
    _, meta, _ = inpage.unpack(inpage.inputs_payload(enc.x[:5], False, enc.feature_names))
    assert meta["feature_names"] == read_csv(wine_run)[0]


def test_bar_strips_of_features_in_their_own_units_get_a_scale_each(wine_run, enc):
    """Wine in the file's units (proline spans ~1,400, hue ~1.2): one shared scale would leave
    every bar but proline's a flat line, so the hover's strip and Interpolate's bars get one
    range per feature, each that feature's min and max (Interpolate's holding 0). Features on
    comparable scales keep one shared range."""
    run = load_run(wine_run)
    recon = run.decode(enc.mu).numpy()
    _, meta, arrays = inpage.unpack(inpage.samples_payload(run, enc, recon))
    both = np.concatenate([arrays["bars_x"], arrays["bars_recon"]])  # (2n, 13): what the strip draws
    ranges = np.array(meta["bar_ranges"])
    assert ranges.shape == (13, 2)
    np.testing.assert_allclose(ranges[:, 0], both.min(0), rtol=1e-6)
    np.testing.assert_allclose(ranges[:, 1], both.max(0), rtol=1e-6)
    assert meta["bar_range"] == [float(both.min()), float(both.max())]  # the shared one, kept beside
    spans = ranges[:, 1] - ranges[:, 0]
    assert spans.max() / spans.min() > 100  # why: proline against hue
    _, meta, _ = inpage.unpack(inpage.inputs_payload(enc.x, False, enc.feature_names))  # the live map's
    np.testing.assert_allclose(np.array(meta["bar_ranges"])[:, 1], enc.x.max(0), rtol=1e-6)

    at_zero = explore.bar_scales(enc.x, include_zero=True)  # Interpolate's: its shared range holds 0
    assert at_zero["range"] == [0.0, float(enc.x.max())] and at_zero["ranges"] == meta["bar_ranges"]
    standardised = (enc.x - enc.x.mean(0)) / enc.x.std(0)  # the same table in comparable units
    scales = explore.bar_scales(standardised)
    assert scales["ranges"] is None
    assert scales["range"] == [float(standardised.min()), float(standardised.max())]
    flat = explore.bar_scales(np.ones((4, 3)))  # no spread at all: a range of width 1, no division by 0
    assert flat == {"range": [1.0, 2.0], "ranges": None}


def test_the_latent_map_page_names_the_label_categories_and_features(wine_run, make_app):
    at = make_app(wine_run.parent, view="latent-map", run=wine_run.name, sample=4).run(timeout=120)
    assert_clean(at)
    assert at.selectbox(key="color_by").value == "target"
    assert "label" not in at.selectbox(key="color_by").options
    view, (_, samples_meta, _), (_, meta, arrays) = latent_map(at)
    features = read_csv(wine_run)[0]
    assert meta["legend"]["name"] == "target" and [i["label"] for i in meta["legend"]["items"]] == CLASSES
    assert samples_meta["feature_names"] == features
    # the selected sample: its bars named by the CSV's columns, its label by its class name
    bars = [s for s in plotly_specs(at) if s["data"] and s["data"][0]["type"] == "bar"]
    assert bars and all(list(trace["y"]) == features for trace in bars[0]["data"])
    x4 = load_run(wine_run).load_data().x_test[4:5].numpy()
    shown = bars[0]["data"][0]  # the input's bars: each at its place in the feature's test-set range
    np.testing.assert_allclose(array(shown["customdata"]), x4[0], rtol=1e-6)
    assert 0.0 <= array(shown["x"]).min() and array(shown["x"]).max() <= 1.0
    captions = [c.value for c in at.caption]
    assert f"target = {class_of_test_samples(wine_run, x4)[0]}" in captions
    assert any("test sample x of **wine.csv**," in c for c in captions), "the data set is named by its file"


def test_interpolate_and_generate_name_the_features(wine_run, make_app):
    features = read_csv(wine_run)[0]
    at = make_app(wine_run.parent, view="interpolate", run=wine_run.name, a=0, b=3).run(timeout=120)
    assert_clean(at)
    header, blobs = interpolation_message(at)
    assert header["kind"] == "values" and header["feature_names"] == features
    assert blobs["values"].shape[1] == len(features)
    # the path's bars, each feature on its own scale: its range over the test set and the path
    x_test = explore.encode_test(load_run(wine_run)).x
    ranges = np.array(header["ranges"])
    np.testing.assert_allclose(ranges[:, 0], np.minimum(blobs["values"].min(0), x_test.min(0)), rtol=1e-6)
    np.testing.assert_allclose(ranges[:, 1], np.maximum(blobs["values"].max(0), x_test.max(0)), rtol=1e-6)
    strip = at.dataframe[0].value  # the strip, the page's one table
    assert list(strip.index) == features and strip.index.name == "feature"
    configs = {e.proto.id.rsplit("-", 1)[-1]: json.loads(e.proto.config) for e in at.get("plotly_chart")}
    assert configs["path_profile"]["toImageButtonOptions"]["filename"] == "wine-names-interpolate-path_profile"
    assert configs["path_profile"]["staticPlot"] is True

    at = make_app(wine_run.parent, view="generate", run=wine_run.name).run(timeout=120)
    assert_clean(at)
    heatmaps = [s["data"][0] for s in plotly_specs(at) if s["data"] and s["data"][0]["type"] == "heatmap"]
    assert heatmaps and all(list(h["x"]) == features for h in heatmaps)
    assert list(at.dataframe[0].value.columns) == features


def test_the_codes_csv_names_the_label_and_shows_its_class_names(wine_run, enc):
    rows = list(csv.DictReader(io.StringIO(exports.codes_csv(enc, explore.project(enc.mu)).decode())))
    assert list(rows[0])[:2] == ["index", "target"]
    assert [r["target"] for r in rows] == class_of_test_samples(wine_run, enc.x)
    np.testing.assert_allclose([float(r["mu_1"]) for r in rows], enc.mu[:, 0], rtol=1e-6)
    samples = exports.vectors_csv(enc.x[:3], explore.feature_names(enc)).decode().splitlines()
    assert samples[0].split(",") == read_csv(wine_run)[0]


def test_the_inside_elbo_pages_figures_download_under_the_run_and_view(wine_run, make_app):
    at = make_app(wine_run.parent, view="inside-elbo", run=wine_run.name).run(timeout=180)
    assert_clean(at)
    configs = {e.proto.id.rsplit("-", 1)[-1]: json.loads(e.proto.config) for e in at.get("plotly_chart")}
    assert len(configs) >= 3
    for key, cfg in configs.items():
        assert cfg["toImageButtonOptions"]["filename"] == f"wine-names-inside-elbo-{key}", key


def test_the_plotly_figures_use_the_names():
    xy = np.random.default_rng(0).normal(size=(12, 2))
    labels = np.repeat([0.0, 1.0, 2.0], 4)
    fig = charts.latent_map(xy, labels, "target", True, category_names={0.0: "class_0", 1.0: "class_1"})
    points = [tr for tr in fig.data if tr.type == "scattergl"]
    assert [tr.name for tr in points] == ["class_0", "class_1", "target 2"]  # no name: the label and value
    assert fig.layout.legend.title.text == "target"
    assert "target: class_1" in points[1].hovertemplate
    fig = charts.vector_bars({"x": np.arange(3.0), "f(mu(x))": np.ones(3)}, "t", ["alcohol", "ash", "hue"])
    assert [list(tr.y) for tr in fig.data] == [["alcohol", "ash", "hue"]] * 2  # a row per feature
    assert [tr.orientation for tr in fig.data] == ["h", "h"] and fig.layout.yaxis.autorange == "reversed"
    fig = charts.vector_bars({"x": np.arange(3.0)}, "t", ["too", "few"])  # names that do not fit: numbered
    assert list(fig.data[0].y) == ["x1", "x2", "x3"]
    # a long name is shortened on the axis (a narrow column), whole in the hover's %{y}
    long = "od280/od315_of_diluted_wines"
    fig = charts.vector_bars({"x": np.arange(2.0)}, "t", ["hue", long])
    assert list(fig.layout.yaxis.tickvals) == ["hue", long] and fig.data[0].y[1] == long
    shown = fig.layout.yaxis.ticktext
    assert shown[0] == "hue" and len(shown[1]) == charts.BAR_NAME_CHARS and long.startswith(shown[1][:-1])
    # features in units far apart: each bar at its place in its own range, the value in the hover
    fig = charts.vector_bars({"x": np.array([13.0, 1000.0])}, "t", ["alcohol", "proline"], [[11.0, 15.0], [280.0, 1680.0]])
    np.testing.assert_allclose(fig.data[0].x, [0.5, 720 / 1400])
    assert list(fig.data[0].customdata) == [13.0, 1000.0] and "customdata" in fig.data[0].hovertemplate
    assert fig.layout.xaxis.title.text == "place in range"
    fig = charts.data_scatter(xy, {}, "t", ["alcohol", "ash"])
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("alcohol", "ash")
