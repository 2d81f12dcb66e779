"""Generate on data that are not images (issue 15, item 4): every requested sample and every
feature by name, and traversals that say their z values; the samples download as CSV."""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from explorer.services import exports
from tests.explorer.explorer_helpers import array, assert_clean
from trainer import load_run


def test_generate_shows_every_sample_and_feature_of_vectors(variety_runs, make_app):
    run = load_run(variety_runs / "lingauss-3d")  # 8-D vectors, 3-D latent
    d_x = int(np.prod(run.model.data_shape))
    at = make_app(variety_runs, view="generate", run="lingauss-3d")
    at.run(timeout=180)
    assert_clean(at)
    n = at.slider(key="n_samples").value
    specs = {e.proto.id.rsplit("-", 1)[-1]: json.loads(e.proto.spec) for e in at.get("plotly_chart")}
    configs = {e.proto.id.rsplit("-", 1)[-1]: json.loads(e.proto.config) for e in at.get("plotly_chart")}
    assert configs["gen_heatmap"]["toImageButtonOptions"]["filename"] == "lingauss-3d-generate-gen_heatmap"
    heat = specs["gen_heatmap"]["data"][0]
    assert heat["type"] == "heatmap"
    values = array(heat["z"]).reshape(n, d_x)
    names = list(heat["x"])
    assert names == [f"x{j + 1}" for j in range(d_x)] and len(heat["y"]) == n
    np.testing.assert_allclose(values, run.generate(n, seed=0).numpy().reshape(n, d_x), rtol=1e-5, atol=1e-6)
    assert len(at.dataframe[0].value) == n, "every requested sample is listed"

    # traversals: one heatmap per dimension shown, its rows named by the z value
    shown = at.slider(key="traversal_dims").value
    steps = at.slider(key="traversal_steps").value
    traversals = [s for k, s in specs.items() if k.startswith("traversal_heatmap_")]
    assert len(traversals) == shown
    rows = list(traversals[0]["data"][0]["y"])
    zs = np.linspace(-3, 3, steps)
    assert len(rows) == steps and rows[0].endswith(f"= {zs[0]:+.2f}") and rows[-1].endswith(f"= {zs[-1]:+.2f}")
    assert list(traversals[0]["data"][0]["x"]) == names

    # the download is the same numbers with the same names
    table = list(csv.reader(io.StringIO(exports.vectors_csv(values, names).decode())))
    assert table[0] == names and len(table) == n + 1
    np.testing.assert_allclose(np.array(table[1:], dtype=float), values)
