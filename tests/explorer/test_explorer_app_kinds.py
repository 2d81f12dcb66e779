"""The exploring views on other kinds of runs: a 4-D latent (projections), 2-D points that
are not images, and 8-D vectors without labels."""

from __future__ import annotations

import pytest

from explorer_helpers import assert_clean, interpolation_message, latent_map


@pytest.mark.parametrize("run", ["digits-4d", "gmm-2d", "lingauss-3d"])
@pytest.mark.parametrize("view", ["latent-map", "interpolate", "elbo", "inside-elbo", "generate"])
def test_views_render_other_kinds_of_runs(make_app, variety_runs, run, view):
    at = make_app(variety_runs, view=view, run=run).run()
    assert_clean(at)
    assert at.query_params["run"] == run


def test_a_4d_latent_is_projected_and_the_path_follows_the_projection(make_app, variety_runs):
    at = make_app(variety_runs, view="latent-map", run="digits-4d").run()
    assert at.radio(key="projection").value == "PCA"
    view, _, _ = latent_map(at)
    assert view["axes"][0].startswith("PC 1") and view["decode"]  # the cursor decodes on the PCA plane
    at.radio(key="projection").set_value("t-SNE").run(timeout=120)
    assert_clean(at)
    view, _, _ = latent_map(at)
    assert view["axes"][0] == "t-SNE 1" and not view["decode"]  # no plane of codes under t-SNE
    at.switch_page("views/interpolate.py").run(timeout=120)
    assert_clean(at)
    header, blobs = interpolation_message(at)  # the component's map: the codes and the path through t-SNE
    assert header["map"]["axis_titles"][0] == "t-SNE 1" and header["method"] == "lerp"
    assert blobs["path"].shape == (header["steps"], 2) and len(blobs["points"]) == header["map"]["total"]
    assert any("t-SNE" in c.value for c in at.caption)
