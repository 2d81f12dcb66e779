"""Chart builders: arrays in, plotly figures out; traces, colours by term, units."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer import charts
from explorer.charts import NATS, TERM_COLORS


def test_charts_import_neither_streamlit_nor_torch():
    tree = ast.parse(Path(charts.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"streamlit", "torch", "trainer"}


def metrics_rows(n=5):
    rng = np.random.default_rng(0)
    return [{"epoch": e, "train_elbo": float(rng.normal()), "train_recon": float(rng.normal()),
             "train_kl": float(rng.random()), "test_elbo": float(rng.normal()),
             "test_recon": float(rng.normal()), "test_kl": float(rng.random())} for e in range(1, n + 1)]


def test_training_curves_colour_by_term_and_draw_minus_kl():
    rows = metrics_rows()
    fig = charts.training_curves(charts.metrics_arrays(rows))
    assert isinstance(fig, go.Figure) and len(fig.data) == 6
    by_name = {tr.name: tr for tr in fig.data}
    assert by_name["ELBO (test)"].line.color == TERM_COLORS["elbo"]
    assert by_name["recon (train)"].line.color == TERM_COLORS["recon"]
    kl = by_name["-KL(q(z|x) || p(z)) (test)"]
    assert kl.line.color == TERM_COLORS["kl"]
    np.testing.assert_allclose(kl.y, [-r["test_kl"] for r in rows])
    assert {tr.line.dash for tr in fig.data if "(train)" in tr.name} == {"dash"}
    assert fig.layout.yaxis.title.text == NATS


def test_metrics_arrays_tolerate_missing_keys():
    m = charts.metrics_arrays([{"epoch": 1, "test_elbo": 2.0}, {"epoch": 2}])
    np.testing.assert_array_equal(m["epoch"], [1, 2])
    assert m["test_elbo"][0] == 2.0 and np.isnan(m["test_elbo"][1]) and np.isnan(m["train_kl"]).all()


def test_latent_map_discrete_labels_one_webgl_trace_per_class():
    rng = np.random.default_rng(1)
    xy, labels = rng.normal(size=(30, 2)), rng.integers(0, 3, 30).astype(float)
    fig = charts.latent_map(xy, labels, "digit", discrete=True, selected=4)
    points = [tr for tr in fig.data if isinstance(tr, go.Scattergl)]
    assert len(points) == 3
    assert sorted(np.concatenate([tr.customdata for tr in points]).tolist()) == list(range(30))
    for tr in points:  # each point carries its own index: a selection names the sample
        np.testing.assert_allclose(np.c_[tr.x, tr.y], xy[np.asarray(tr.customdata)])
    assert len({tr.marker.color for tr in points}) == 3
    sel = [tr for tr in fig.data if tr.name == "selected: sample 4"][0]
    assert (sel.x[0], sel.y[0]) == (xy[4, 0], xy[4, 1])
    assert fig.layout.yaxis.scaleanchor == "x"


def test_latent_map_continuous_colour_and_overlays():
    rng = np.random.default_rng(2)
    xy, value = rng.normal(size=(20, 2)), rng.normal(size=20)
    axis = np.linspace(-3, 3, 10)
    path = np.c_[np.linspace(0, 1, 7), np.linspace(0, 2, 7)]
    fig = charts.latent_map(xy, value, "ELBO", discrete=False, path=path, path_name="path (slerp)",
                            endpoints={"A": path[0], "B": path[-1]}, current=path[3],
                            background=(np.zeros((30, 30), np.uint8), 3.0),
                            contours=(axis, np.zeros((10, 10))))
    gl = [tr for tr in fig.data if isinstance(tr, go.Scattergl)]
    assert len(gl) == 1 and gl[0].marker.colorscale is not None
    np.testing.assert_allclose(gl[0].marker.color, value)
    names = [tr.name for tr in fig.data]
    assert "path (slerp)" in names and "z(t)" in names and "log p(z)" in names
    np.testing.assert_allclose(fig.data[names.index("path (slerp)")].y, path[:, 1])
    img = fig.layout.images[0]
    assert img.source.startswith("data:image/png;base64,") and (img.x, img.y, img.sizex) == (-3.0, 3.0, 6.0)


def test_latent_map_marks_the_strip_steps_without_a_sample_index():
    xy = np.random.default_rng(3).normal(size=(20, 2))
    path = np.c_[np.linspace(0, 1, 11), np.linspace(0, 2, 11)]
    fig = charts.latent_map(xy, None, "", False, path=path, steps=(path[[0, 5, 10]], np.array([0.0, 0.5, 1.0])))
    steps = next(tr for tr in fig.data if tr.name == "strip steps")
    assert list(steps.text) == ["t = 0.00", "t = 0.50", "t = 1.00"]
    assert steps.customdata is None  # a click on it must not be read as a test sample


def test_elbo_waterfall_is_fig_1_4_with_the_numbers():
    recon, kl, log_px = 30.0, 6.0, 25.5
    fig = charts.elbo_waterfall(recon, kl, log_px)
    bar = fig.data[0]
    tops = np.asarray(bar.base) + np.asarray(bar.y)
    # recon bar reaches recon; -KL hangs from recon down to the ELBO; the gap rises to log p(x)
    np.testing.assert_allclose(tops, [recon, recon - kl, recon - kl, log_px, log_px])
    np.testing.assert_allclose(bar.base, [0, recon, 0, recon - kl, 0])
    assert list(bar.marker.color) == [TERM_COLORS[t] for t in ("recon", "kl", "elbo", "gap", "log_px")]
    assert fig.layout.yaxis.title.text == NATS and "higher is better" in NATS


def test_elbo_waterfall_without_log_px_has_three_bars():
    fig = charts.elbo_waterfall(-50.0, 3.0)
    assert len(fig.data[0].y) == 3 and fig.data[0].y[2] == pytest.approx(-53.0)


def test_term_histograms_negate_kl_and_mark_the_sample():
    rng = np.random.default_rng(3)
    v = {"elbo": rng.normal(size=50), "recon": rng.normal(size=50), "kl": rng.random(50)}
    fig = charts.term_histograms(v, marks={"elbo": 0.1, "recon": 0.2, "kl": 0.3})
    hists = [tr for tr in fig.data if isinstance(tr, go.Histogram)]
    assert [h.marker.color for h in hists] == [TERM_COLORS[t] for t in ("elbo", "recon", "kl")]
    np.testing.assert_allclose(hists[2].x, -v["kl"])
    assert len(fig.layout.shapes) == 3 and fig.layout.shapes[2].x0 == pytest.approx(-0.3)


def test_kl_per_dim_bars_mark_inactive_units():
    fig = charts.kl_per_dim_bars(np.array([2.0, 0.001, 1.5]), np.array([True, False, True]))
    assert list(fig.data[0].marker.color) == [TERM_COLORS["kl"], charts.INACTIVE_COLOR, TERM_COLORS["kl"]]
    assert "2 of 3 active" in fig.layout.title.text
    assert "nats per sample" in fig.layout.yaxis.title.text


def test_path_profile_and_compare_curves():
    t = np.linspace(0, 1, 11)
    curves = {m: {"log_prior": -t, "decoded_elbo": t} for m in ("lerp", "slerp")}
    fig = charts.path_profile(t, curves, current_t=0.3)
    assert [tr.name for tr in fig.data] == ["lerp: log p(z)", "lerp: ELBO", "slerp: log p(z)", "slerp: ELBO"]
    assert {tr.line.dash for tr in fig.data if tr.name.startswith("slerp")} == {"dot"}
    # the current t: one gold line per subplot, moved in place on a slider move
    assert [sh.x0 for sh in fig.layout.shapes if sh.name == charts.CURRENT_T] == [0.3, 0.3]
    assert charts.mark_t(fig, 0.7) is fig
    marks = [sh for sh in fig.layout.shapes if sh.name == charts.CURRENT_T]
    assert [(sh.x0, sh.x1) for sh in marks] == [(0.7, 0.7), (0.7, 0.7)]
    fig = charts.compare_curves({"a": (np.arange(3), np.ones(3)), "b": (np.arange(3), np.zeros(3))}, "kl")
    assert [tr.name for tr in fig.data] == ["a", "b"] and list(fig.data[0].y) == [-1, -1, -1]
    assert fig.layout.yaxis.title.text == NATS


def test_data_space_figures():
    fig = charts.data_scatter(np.zeros((5, 2)), {"decoded": np.ones((3, 2))}, "t")
    assert len(fig.data) == 2 and len(fig.data[1].x) == 3
    fig = charts.vector_bars({"x": np.arange(4), "recon": np.arange(4) + 1.0}, "t")
    assert [tr.name for tr in fig.data] == ["x", "recon"] and fig.layout.barmode == "group"
