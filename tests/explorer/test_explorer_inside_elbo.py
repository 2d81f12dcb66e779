"""The Inside the ELBO page's services (explorer/services/inside_elbo.py) and figures
(explorer/charts_elbo.py) on real small runs: a linear run on linear-gaussian, whose every
number has a closed form to check against, and a 1-D latent run (the curves, not a heat map)."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import charts_elbo
from explorer.services import inside_elbo
from trainer import RunConfig, fit, load_run, posterior


def _train(out, data: str, arch: str, d: int, epochs: int = 5):
    cfg = RunConfig(data=data)
    cfg.model.arch, cfg.model.latent_dim, cfg.model.hidden = arch, d, [32]
    cfg.train.epochs, cfg.train.threads = epochs, 1
    fit(cfg, out)
    return load_run(out)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs") / "lin", "linear-gaussian:d=4,sigma=0.3,n=1000", "linear", 2)


def test_the_reparameterized_estimate_converges_to_the_exact_recon(linear):
    x = linear.load_data().x_test[0]
    r = inside_elbo.reparameterization(linear, x)
    assert r.exact is not None and len(r.estimate) == inside_elbo.M_MAX
    assert abs(r.estimate[-1] - r.exact) < 4 * r.se[-1]
    np.testing.assert_allclose(r.z, r.mu + r.sigma * r.eps, rtol=1e-6)  # eq 1.24, draw by draw
    assert np.isnan(r.se[0]) and r.se[9] > r.se[-1]


def test_distance_from_truth_splits_the_gap_to_the_datas_density(linear):
    data = linear.load_data()
    t = inside_elbo.distance_from_truth(linear, data.x_test.numpy())
    x = data.x_test[: t["n"]]
    cf = posterior.linear_closed_forms(linear.model, x)
    assert t["model_log_px_how"] == "closed form" and t["n"] == inside_elbo.TEST_SUBSET
    assert abs(t["model_log_px"] - float(cf["model_log_px"].mean())) < 1e-9
    exact = float(data.exact_log_px(x).double().mean())
    assert abs(t["model_wrong"] + t["encoder_wrong"] - (exact - t["elbo"])) < 1e-6
    assert t["encoder_wrong"] > 0 and t["iwae"] <= t["model_log_px"] + 4 * t["encoder_wrong_se"]


def test_the_landscape_is_for_linear_runs_on_linear_gaussian_data(linear, tmp_path):
    assert inside_elbo.linear_gaussian_setting(linear) == (4, 0.3)
    land = inside_elbo.linear_landscape(4, 0.3)
    best = np.unravel_index(np.argmax(land["kl"] * -1), land["kl"].shape)
    assert abs(land["t"][best[1]] - 1) < 0.05  # the KL alone is smallest at t = 1
    path = inside_elbo.saved_path(linear)
    assert list(path["epoch"]) == [0, 1, 2, 3, 4, 5]
    fig = charts_elbo.elbo_landscape(land, path["t"], path["s"])
    assert sum(tr.type == "contour" for tr in fig.data) == 3
    gmm = _train(tmp_path / "gmm", "gmm2d:n=300", "mlp", 1, epochs=1)
    assert inside_elbo.linear_gaussian_setting(gmm) is None and inside_elbo.saved_path(gmm) is None


def test_a_1d_posterior_is_drawn_as_two_densities(tmp_path):
    run = _train(tmp_path / "gmm1", "gmm2d:n=300", "mlp", 1, epochs=2)
    p = inside_elbo.true_posterior(run, run.load_data().x_test[0])
    (z,) = p["axes"]
    assert abs(float(np.sum(p["density"]) * (z[1] - z[0])) - 1) < 1e-6  # a density on the grid
    fig = charts_elbo.posterior_heatmap(p["axes"], p["density"], p["mu"], p["sigma"], "t")
    assert [tr.name for tr in fig.data] == ["true posterior p(z|x)", "q(z|x)"]


def test_the_reparameterization_cloud_is_drawn_on_the_latent_map():
    rng = np.random.default_rng(0)
    mu, sigma = np.array([1.0, -2.0]), np.array([0.05, 0.1])
    z = mu + sigma * rng.standard_normal((20, 2))  # eq 1.24
    codes = rng.standard_normal((300, 2)) * 3  # the map: spread far wider than q
    fig = charts_elbo.reparam_cloud(z, mu, sigma, ("z1", "z2"), "t", codes)
    names = [t.name for t in fig.data]
    assert names[0] == "the latent map: mu(x) of 300 test samples"  # behind everything else
    assert len(fig.data[0].x) == 300 and names[1] == "z = mu + sigma * eps (20 draws)"
    # the view opens on the draws and q's 2-sigma ellipse, not on the whole map
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    for lo, hi, k in ((x0, x1, 0), (y0, y1, 1)):
        assert lo < min(z[:, k].min(), mu[k] - 2 * sigma[k]) and hi > max(z[:, k].max(), mu[k] + 2 * sigma[k])
        assert hi - lo < 2.0  # the map spans about 18
    # without the map: only the draws and q, autoscaled
    bare = charts_elbo.reparam_cloud(z, mu, sigma, ("z1", "z2"), "t")
    assert bare.data[0].name.startswith("z = mu") and bare.layout.xaxis.range is None
    # a large test set: an evenly spaced subset of the map, and the name says so
    big = charts_elbo.reparam_cloud(z, mu, sigma, ("z1", "z2"), "t", np.arange(20_000.0)[:, None].repeat(2, 1))
    assert big.data[0].name == "the latent map: mu(x) of 3000 of 20000 test samples"
    assert len(big.data[0].x) == 3000 and big.data[0].x[0] == 0 and big.data[0].x[-1] == 19_999


def test_the_code_histograms_are_densities_binned_on_the_server():
    z = np.random.default_rng(1).standard_normal((5000, 3))
    fig = charts_elbo.code_histograms(z, [0, 2])
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2
    for j, bar in zip([0, 2], bars):
        assert len(bar.x) == 50  # bins, not the 5000 draws
        assert abs(float(np.sum(np.asarray(bar.y) * np.asarray(bar.width))) - 1) < 1e-9  # a density
        assert abs(float(np.sum(np.asarray(bar.x) * bar.y * bar.width)) - z[:, j].mean()) < 0.02
