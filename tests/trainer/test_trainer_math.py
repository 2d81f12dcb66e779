"""The ELBO's pieces against torch.distributions, an independent implementation.

KL (total and per dimension), log q(z|x), log p(x|z) for both likelihoods (the Gaussian one
with its constant -(D/2) log(2 pi sigma_dec^2)), the whole elbo_terms dict, the importance
sampled log p(x), and the closed forms of the worked examples.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (Bernoulli, Categorical, Independent, MixtureSameFamily,
                                 MultivariateNormal, Normal, kl_divergence)

from trainer.config import ModelConfig
from trainer.elbo import elbo_terms, log_px
from trainer.examples import (gmm_log_px, linear_gaussian_elbo, linear_gaussian_entropy,
                              linear_gaussian_log_px)
from trainer.model import LOGVAR_MIN, DiagonalGaussian, bounded_logvar, build_model, log_standard_normal

TOL = 1e-5


def random_gaussian(n=64, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = 3 * torch.randn(n, d, generator=g, dtype=dtype)
    logvar = 4 * torch.randn(n, d, generator=g, dtype=dtype)  # variances from e^-8 to e^8
    return DiagonalGaussian(mu, logvar)


def reference(q: DiagonalGaussian) -> Normal:
    return Normal(q.mu, torch.exp(0.5 * q.logvar))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_and_per_dim_kl_match_torch_distributions(dtype):
    q = random_gaussian(dtype=dtype)
    prior = Normal(torch.zeros_like(q.mu), torch.ones_like(q.mu))
    expected_per_dim = kl_divergence(reference(q), prior)  # (N, d)
    assert q.kl_per_dim().shape == (64, 5)
    torch.testing.assert_close(q.kl_per_dim(), expected_per_dim, rtol=TOL, atol=TOL)
    torch.testing.assert_close(q.kl(), expected_per_dim.sum(-1), rtol=TOL, atol=TOL)
    assert (q.kl_per_dim() >= 0).all()


def test_kl_is_zero_exactly_at_the_prior():
    q = DiagonalGaussian(torch.zeros(3, 4), torch.zeros(3, 4))
    assert torch.equal(q.kl(), torch.zeros(3))


def test_kl_per_dim_with_a_shared_logvar_broadcasts_to_n_by_d():
    """The linear encoder's log-variance is one vector for every x."""
    mu, logvar = torch.randn(6, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar).expand_as(mu)), Normal(0.0, 1.0))
    torch.testing.assert_close(q.kl_per_dim(), expected, rtol=TOL, atol=TOL)


def test_general_gaussian_kl_theorem_1_3_reduces_to_the_diagonal_formula():
    """eq 1.25 with S1 = I, m1 = 0 and a diagonal S0 is the per-sample KL used for training."""
    q = random_gaussian(n=8, d=3)
    for i in range(8):
        p0 = MultivariateNormal(q.mu[i], torch.diag(torch.exp(q.logvar[i])))
        p1 = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        assert abs(float(kl_divergence(p0, p1)) - float(q.kl()[i])) < TOL * max(1.0, float(q.kl()[i]))


def test_log_prob_matches_independent_normal():
    q = random_gaussian(n=16, d=4, seed=1)
    z = q.sample(7, torch.Generator().manual_seed(2))  # (7, 16, 4)
    assert z.shape == (7, 16, 4)
    expected = Independent(reference(q), 1).log_prob(z)  # (7, 16)
    torch.testing.assert_close(q.log_prob(z), expected, rtol=TOL, atol=TOL)
    expected_prior = Independent(Normal(torch.zeros(4, dtype=torch.float64), 1.0), 1).log_prob(z)
    torch.testing.assert_close(log_standard_normal(z), expected_prior, rtol=TOL, atol=TOL)


def test_bounded_logvar_is_the_identity_above_the_bound_and_finite_below_it():
    raw = torch.tensor([-500.0, -100.0, -31.0, -30.0, -12.0, -10.0 + 1e-3, -1.234567, 0.0, 7.5])
    raw.requires_grad_(True)
    lv = bounded_logvar(raw)
    above = raw > LOGVAR_MIN + 20.0
    assert torch.equal(lv[above], raw[above])  # bit for bit: trained models' numbers unchanged
    assert (lv >= LOGVAR_MIN).all() and torch.isfinite(lv).all()
    assert (lv[:4] < LOGVAR_MIN + 1.0).all()  # far below the bound, it sits at the bound
    lv.sum().backward()
    assert (raw.grad[1:] > 0).all() and (raw.grad <= 1).all()  # no dead unit near the bound
    q = DiagonalGaussian(torch.zeros(9), lv.detach())
    assert torch.isfinite(q.kl()).all() and torch.isfinite(q.log_prob(torch.zeros(9))).all()


def test_sample_is_the_reparameterization_mu_plus_sigma_eps():
    q = random_gaussian(n=10, d=3, seed=3)
    z = q.sample(None, torch.Generator().manual_seed(4))
    eps = torch.randn(10, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(z, q.mu + torch.exp(0.5 * q.logvar) * eps, rtol=0, atol=0)


def test_sample_has_the_right_moments():
    q = DiagonalGaussian(torch.tensor([[1.5, -2.0]]), torch.log(torch.tensor([[0.25, 4.0]])))
    z = q.sample(200_000, torch.Generator().manual_seed(5))[:, 0]  # (n, 2)
    se_mean = torch.tensor([0.5, 2.0]) / math.sqrt(200_000)
    assert ((z.mean(0) - q.mu[0]).abs() < 5 * se_mean).all()
    assert ((z.var(0) / torch.tensor([0.25, 4.0]) - 1).abs() < 5 * math.sqrt(2 / 200_000)).all()


@pytest.mark.parametrize("sigma_dec", [0.05, 0.7, 3.0])
def test_gaussian_log_likelihood_includes_the_constant(sigma_dec):
    model = build_model(ModelConfig(hidden=[8], latent_dim=2, sigma_dec=sigma_dec), (1, 3, 4)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 12, generator=g, dtype=torch.float64)
    out = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)  # (M, N, D) decoder means
    expected = Independent(Normal(out, sigma_dec), 1).log_prob(x)  # (M, N), constant included
    got = model.log_px_given_z(x, out)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)


def test_learned_sigma_dec_is_the_exp_of_its_log_parameter():
    model = build_model(ModelConfig(hidden=[8], latent_dim=2, sigma_dec="learned"), (4,)).double()
    with torch.no_grad():
        model.log_sigma_dec.fill_(math.log(0.3))
    x, out = torch.rand(6, 4, dtype=torch.float64), torch.rand(6, 4, dtype=torch.float64)
    torch.testing.assert_close(model.log_px_given_z(x, out), Independent(Normal(out, 0.3), 1).log_prob(x))
    assert isinstance(model.log_sigma_dec, torch.nn.Parameter) and model.log_sigma_dec.shape == ()


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_log_likelihood_matches_torch(binary):
    model = build_model(ModelConfig(hidden=[8], latent_dim=2, likelihood="bernoulli"), (1, 4, 4)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 16, generator=g, dtype=torch.float64)
    if binary:
        x = x.round()
    logits = 4 * torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    expected = Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)
    torch.testing.assert_close(model.log_px_given_z(x, logits), expected, rtol=TOL, atol=TOL)
    assert torch.equal(model.decoder_mean(logits), torch.sigmoid(logits))


@pytest.mark.parametrize("likelihood,mc", [("gaussian", 1), ("gaussian", 4), ("bernoulli", 3)])
def test_elbo_terms_match_an_independent_computation(likelihood, mc):
    """Rebuild recon (eq 1.31, 1.33) and KL (eq 1.34) from torch.distributions with the
    same eps, for a random MLP VAE."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[16, 8], latent_dim=3, likelihood=likelihood,
                                    sigma_dec=0.4 if likelihood == "gaussian" else "learned"), (1, 4, 4)).double()
    x = torch.rand(7, 1, 4, 4, dtype=torch.float64)
    terms = elbo_terms(model, x, mc, torch.Generator().manual_seed(9))
    assert {k: tuple(v.shape) for k, v in terms.items()} == {
        "recon": (7,), "kl": (7,), "kl_per_dim": (7, 3), "elbo": (7,), "mu": (7, 3), "logvar": (7, 3)}

    mu, logvar = model.encoder_net(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    eps = torch.randn(mc, 7, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = model.decoder_net((mu + torch.exp(0.5 * logvar) * eps).reshape(-1, 3)).reshape(mc, 7, 16)
    x_flat = x.reshape(7, 16)
    if likelihood == "gaussian":
        log_lik = Independent(Normal(out, 0.4), 1).log_prob(x_flat)
    else:
        log_lik = Independent(Bernoulli(logits=out, validate_args=False), 1).log_prob(x_flat)
    kl_per_dim = kl_divergence(q, Normal(0.0, 1.0))
    torch.testing.assert_close(terms["recon"], log_lik.mean(0), rtol=TOL, atol=TOL)
    torch.testing.assert_close(terms["kl_per_dim"], kl_per_dim, rtol=TOL, atol=TOL)
    torch.testing.assert_close(terms["kl"], kl_per_dim.sum(-1), rtol=TOL, atol=TOL)
    torch.testing.assert_close(terms["elbo"], log_lik.mean(0) - kl_per_dim.sum(-1), rtol=TOL, atol=TOL)


def test_log_px_matches_an_independent_importance_sampler():
    """log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, same eps."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(hidden=[16], latent_dim=2, sigma_dec=0.5), (6,)).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    k = 50
    got = log_px(model, x, k, torch.Generator().manual_seed(3))
    mu, logvar = model.encoder_net(x)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    eps = torch.randn(k, 9, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    out = model.decoder_net(z.reshape(-1, 2)).reshape(k, 9, 6)
    log_w = (Independent(Normal(out, 0.5), 1).log_prob(x)
             + Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1).log_prob(z) - q.log_prob(z))
    torch.testing.assert_close(got, torch.logsumexp(log_w, 0) - math.log(k), rtol=TOL, atol=TOL)


def test_log_px_in_small_chunks_estimates_the_same_quantity():
    """Chunking (bounded memory) draws the K samples in pieces; the estimate is unchanged in
    distribution: chunked and one-shot means agree within their Monte Carlo noise."""
    torch.manual_seed(2)
    model = build_model(ModelConfig(hidden=[16], latent_dim=2, sigma_dec=0.5), (6,)).double()
    x = torch.randn(400, 6, dtype=torch.float64)
    whole = log_px(model, x, 64, torch.Generator().manual_seed(0))
    chunked = log_px(model, x, 64, torch.Generator().manual_seed(1), max_elements=400 * 6 * 5)  # chunks of 5
    diff = chunked - whole
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(len(x)) + 1e-12


# -- the worked examples' closed forms -------------------------------------------------------

def test_gmm_log_px_matches_a_torch_mixture():
    g = torch.Generator().manual_seed(0)
    means, weights = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3, 0.4])
    x = 2 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    mix = MixtureSameFamily(Categorical(weights.double()), Independent(Normal(means, 0.7), 1))
    torch.testing.assert_close(gmm_log_px(x, means, 0.7, weights).double(), mix.log_prob(x), rtol=TOL, atol=TOL)


def test_linear_gaussian_log_px_and_entropy_match_torch():
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x = mu + 0.3 * torch.randn(100, 3, dtype=torch.float64)
    dist = Independent(Normal(mu, 0.3), 1)
    torch.testing.assert_close(linear_gaussian_log_px(x, mu, 0.3).double(), dist.log_prob(x), rtol=TOL, atol=TOL)
    assert abs(linear_gaussian_entropy(3, 0.3) - float(dist.entropy())) < TOL


def test_linear_gaussian_elbo_at_t_and_sigma_t_is_log_px_minus_t2_d_over_2():
    """Examples 1.4-1.5 in closed form: with s = sigma t the bound is log p(x) - t^2 d / 2, so
    it rises to the exact log p(x) as t -> 0 (the delta functions)."""
    mu, sigma, d = torch.tensor([1.0, -2.0, 0.5, 0.0]), 0.5, 4
    x = mu + sigma * torch.randn(30, d)
    exact = linear_gaussian_log_px(x, mu, sigma).double()
    for t in (2.0, 1.0, 0.1, 1e-3):
        elbo = linear_gaussian_elbo(x, mu, sigma, t, sigma * t)
        torch.testing.assert_close(elbo, exact - t**2 * d / 2, rtol=1e-6, atol=1e-5)
