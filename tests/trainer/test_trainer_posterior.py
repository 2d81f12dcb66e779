"""trainer/posterior.py against independent references: the true posterior's quadrature
against importance sampling and against the linear model's exact marginal; the linear model's
closed forms against torch.distributions and Monte Carlo; the Monte Carlo standard error
against the spread of repeated estimates; the KL split against the closed-form mean KL;
the two gradient estimators against the exact gradient; eval --json's keys and Theorem 1.1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from trainer import load_run, posterior
from trainer.elbo import elbo_terms, log_px

from tests.trainer.conftest import small_config


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    """A `linear` VAE (2-D latent, Gaussian p(x|z), learned sigma_dec) on 4-D linear-gaussian
    data, trained 5 epochs: its encoder is not the exact posterior, so every term is non-zero."""
    from trainer import fit

    out = tmp_path_factory.mktemp("runs") / "linear-2d"
    fit(small_config("linear-gaussian:d=4,n=2000", arch="linear", latent_dim=2, epochs=5), out)
    return out


def test_quadrature_agrees_with_importance_sampling_on_digits(digits_run):
    run = load_run(digits_run)
    x = run.load_data().x_test[:40]
    quad = posterior.log_px_quadrature(run.model, x)
    lp = log_px(run.model, x, 5000, torch.Generator().manual_seed(0)).double()
    assert abs(float((quad - lp).mean())) < 0.1, (float(quad.mean()), float(lp.mean()))
    # the quadrature is converged: twice as fine and wider changes it by far less
    g = posterior.posterior_grid(run.model, x[0])
    fine = posterior.posterior_grid(run.model, x[0], half_width=12, steps_per_sigma=8)
    assert abs(g.log_px - fine.log_px) < 5e-3
    # Theorem 1.1 on the grid: the gap is a KL (>= 0) and ELBO + KL = log p(x)
    assert g.kl_to_posterior > 0 and abs(g.elbo + g.kl_to_posterior - g.log_px) < 1e-9
    # the grid's posterior is a density: it integrates to 1 over the cells
    area = math.prod(float(a[1] - a[0]) for a in g.axes)
    assert abs(float(g.log_posterior.exp().sum()) * area - 1) < 1e-9


def test_quadrature_matches_the_linear_models_exact_marginal(linear_run):
    run = load_run(linear_run)
    x = run.load_data().x_test[:20]
    quad = posterior.log_px_quadrature(run.model, x)
    exact = posterior.linear_closed_forms(run.model, x)["model_log_px"]
    assert float((quad - exact).abs().max()) < 1e-3
    # and the grid's KL(q || p(z|x)) is the closed form's
    g = posterior.posterior_grid(run.model, x[0])
    kl = posterior.linear_closed_forms(run.model, x[:1])["kl_to_posterior"]
    assert abs(g.kl_to_posterior - float(kl[0])) < 1e-3


def test_linear_closed_forms_against_torch_distributions_and_monte_carlo(linear_run):
    run = load_run(linear_run)
    model = run.model.double()
    x = run.load_data().x_test[:8].double()
    cf = posterior.linear_closed_forms(model, x)
    W, b = model.decoder_net.weight.detach(), model.decoder_net.bias.detach()
    s2 = float(model.sigma_dec.detach()) ** 2
    marginal = MultivariateNormal(b, W @ W.T + s2 * torch.eye(len(b), dtype=torch.float64))
    assert torch.allclose(cf["model_log_px"], marginal.log_prob(x), atol=1e-9)
    q = model.encode(x)
    var = torch.exp(q.logvar).expand_as(q.mu).detach()
    for i in range(len(x)):
        q_i = MultivariateNormal(q.mu[i].detach(), torch.diag(var[i]))
        post_i = MultivariateNormal(cf["post_mean"][i], cf["post_cov"])
        assert abs(float(kl_divergence(q_i, post_i)) - float(cf["kl_to_posterior"][i])) < 1e-9
        prior = MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
        assert abs(float(kl_divergence(q_i, prior)) - float(cf["kl"][i])) < 1e-9
    # the exact recon (the expectation of a quadratic) against Monte Carlo with 200,000 draws
    with torch.no_grad():
        mc = elbo_terms(model, x, 200_000, torch.Generator().manual_seed(0))
        draws = model.log_px_given_z(x.reshape(len(x), -1), model.decode(model.reparameterize(
            model.encode(x), 2000, torch.Generator().manual_seed(1))))  # (2000, N): the spread per draw
    se = draws.std(0) / math.sqrt(200_000)
    assert bool(((mc["recon"] - cf["recon"]).abs() < 4 * se + 1e-9).all()), (mc["recon"], cf["recon"], se)
    # Theorem 1.1 (eq 1.6) to rounding, for every x
    assert float((cf["elbo"] + cf["kl_to_posterior"] - cf["model_log_px"]).abs().max()) < 1e-9


def test_monte_carlo_standard_error_matches_the_spread_of_repeated_estimates(digits_run):
    run = load_run(digits_run)
    x = run.load_data().x_test[3]
    m, repeats = 50, 300
    estimates, ses = [], []
    for seed in range(repeats):
        mean, se = posterior.running_estimate(posterior.recon_draws(run.model, x, m, seed)["log_px_given_z"])
        estimates.append(float(mean[-1]))
        ses.append(float(se[-1]))
    spread = float(torch.tensor(estimates).std())
    typical_se = math.sqrt(sum(s * s for s in ses) / repeats)
    # the sd of a sample sd of 300 estimates is about 4 %: allow 20 %
    assert abs(spread / typical_se - 1) < 0.2, (spread, typical_se)
    # and the error falls as 1 / sqrt(M): at 4 M it is about half
    _, se = posterior.running_estimate(posterior.recon_draws(run.model, x, 4 * m, 0)["log_px_given_z"])
    assert 0.35 < float(se[-1]) / typical_se < 0.65


def test_kl_split_sums_to_the_mean_kl(digits_run):
    run = load_run(digits_run)
    q = run.encode(run.load_data().x_test)
    split = posterior.kl_split(q.mu, q.logvar, draws=16)
    total = split["mutual_info"] + split["kl_aggregate"]
    se = math.hypot(split["mutual_info_se"], split["kl_aggregate_se"])
    assert abs(total - split["mean_kl"]) < 4 * se, (total, split)
    assert 0 < split["mutual_info"] <= split["max_mutual_info"] + 4 * split["mutual_info_se"]
    assert split["kl_aggregate"] > -4 * split["kl_aggregate_se"]
    # the closed-form mean KL is the trainer's own (eq 1.34)
    assert abs(split["mean_kl"] - float(q.kl().mean())) < 1e-5


def test_both_gradient_estimators_are_unbiased_and_reparameterization_has_less_variance(linear_run):
    """For the linear model the gradient of E_q[log p(x|z)] is exact:
    d/dmu = W^T (x - W mu - b) / s^2,  d/dsigma_j = -(W^T W)_jj sigma_j / s^2."""
    run = load_run(linear_run)
    model = run.model
    x = run.load_data().x_test[0]
    est = posterior.gradient_estimators(model, x, m=20_000, seed=0)
    W, b = model.decoder_net.weight.detach().double(), model.decoder_net.bias.detach().double()
    s2 = float(model.sigma_dec.detach()) ** 2
    mu, sigma = est["mu"], est["sigma"]
    exact = torch.cat([W.T @ (x.double() - W @ mu - b) / s2, -torch.diagonal(W.T @ W) * sigma / s2])
    for name in ("score", "reparam"):
        s = posterior.estimator_summary(est[name])
        z = (torch.tensor(s["mean"]) - exact) / torch.tensor(s["se"]).clamp_min(1e-12)
        assert float(z.abs().max()) < 4.5, (name, s, exact)
    score = posterior.estimator_summary(est["score"])["total_variance"]
    reparam = posterior.estimator_summary(est["reparam"])["total_variance"]
    assert reparam < score / 10, (reparam, score)


def test_eval_json_reports_quadrature_and_exact_keys(cli, digits_run, linear_run, linear_gaussian_run):
    r = cli("eval", digits_run, "--json", "--k", "2000", "--threads", "1")
    assert r.status == 0, r.stderr
    out = json.loads(r.stdout)
    assert abs(out["log_px_quadrature"] - out["log_px"]) < 0.1, out
    assert out["log_px_quadrature_n"] == out["n"] and "log_px_quadrature_se" not in out  # the whole test set
    assert "elbo_exact" not in out  # an MLP on digits has no closed forms
    r = cli("eval", digits_run, "--json", "--k", "10", "--threads", "1", "--no-quadrature")
    assert r.status == 0 and "log_px_quadrature" not in json.loads(r.stdout), r.stderr

    for run_dir, d in ((linear_run, 2), (linear_gaussian_run, 4)):
        r = cli("eval", run_dir, "--json", "--k", "200", "--threads", "1")
        assert r.status == 0, r.stderr
        out = json.loads(r.stdout)
        assert abs(out["elbo_exact"] + out["kl_to_posterior_exact"] - out["model_log_px_exact"]) < 1e-6
        assert out["kl_to_posterior_exact"] > 0
        assert out["elbo"] < out["model_log_px_exact"] + 0.1  # the Monte Carlo ELBO too, in noise
        assert ("log_px_quadrature" in out) == (d <= 2)
        if d <= 2:
            assert abs(out["log_px_quadrature"] - out["model_log_px_exact"]) < 1e-3


def test_a_large_test_set_gets_the_quadrature_on_evenly_spaced_rows(digits_run, monkeypatch):
    run = load_run(digits_run)
    x = run.load_data().x_test  # (359, 64)
    monkeypatch.setattr(posterior, "QUADRATURE_MAX_SAMPLES", 40)
    out = posterior.eval_extras(run.model, x)
    rows = np.unique(np.linspace(0, len(x) - 1, 40).round().astype(np.int64))
    each = posterior.log_px_quadrature(run.model, x[torch.as_tensor(rows)]).double()
    assert out["log_px_quadrature_n"] == len(rows) == 40
    assert out["log_px_quadrature"] == pytest.approx(float(each.mean()), abs=1e-9)
    assert out["log_px_quadrature_se"] == pytest.approx(float(each.std()) / math.sqrt(40), rel=1e-9)


def test_hand_set_elbo_grid_is_the_examples_closed_form():
    """Examples 1.3-1.6's ELBO(t, s) over a grid, against trainer.examples at an x whose
    ||(x - mu)/sigma||^2 is its expectation d."""
    from trainer.examples import linear_gaussian_elbo

    d, sigma = 4, 0.5
    mu = torch.arange(d, dtype=torch.float64)
    x = (mu + sigma)[None]  # ||(x - mu)/sigma||^2 = d
    t, s = torch.tensor([0.3, 1.0, 2.0]), torch.tensor([0.1, 0.5])
    grid = posterior.hand_set_elbo_grid(t, s, d, sigma)["elbo"]  # (S, T)
    for a, tv in enumerate(t.tolist()):
        for b, sv in enumerate(s.tolist()):
            assert abs(float(grid[b, a]) - float(linear_gaussian_elbo(x, mu, sigma, tv, sv)[0])) < 1e-9


def test_a_linear_run_saves_its_t_s_path_per_epoch(linear_run, digits_run, tmp_path):
    from trainer import fit
    from trainer.api import read_linear_path

    path = read_linear_path(linear_run)
    assert [r["epoch"] for r in path] == list(range(6))  # epoch 0 (the initial model) to 5
    assert path[-1] == {"epoch": 5, **posterior.linear_path_point(load_run(linear_run).model)}
    assert len({(r["t"], r["s"]) for r in path}) == 6  # it moved every epoch
    assert read_linear_path(digits_run) is None  # an MLP run has none

    out = tmp_path / "resumed"
    cfg = small_config("linear-gaussian:d=4,n=500", arch="linear", latent_dim=2, epochs=2)
    fit(cfg, out)
    cfg.train.epochs = 4
    fit(cfg, out, resume=True)
    resumed = read_linear_path(out)
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3, 4]
    assert resumed[-1] == {"epoch": 4, **posterior.linear_path_point(load_run(out).model)}
