"""The likelihood registry (trainer/likelihoods.py) and the continuous Bernoulli, checked
against torch.distributions and against numerical integration; a real continuous
Bernoulli run on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import ContinuousBernoulli, Independent

from tests.trainer.conftest import small_config
from trainer import TrainerError, evaluate_run, fit, load_dataset, load_run
from trainer.__main__ import build_parser
from trainer.config import ModelConfig
from trainer.likelihoods import LIKELIHOODS, get
from trainer.model import build_model

CB = LIKELIHOODS["continuous-bernoulli"]


def torch_cb(logits: torch.Tensor) -> ContinuousBernoulli:
    return ContinuousBernoulli(logits=logits, validate_args=False)


def logits_with_small_ones(n: int, seed: int) -> torch.Tensor:
    """Logits spread over [-12, 12], a third of them within 0.2 of the singularity at 0,
    exactly 0 and the series' edges included. (Past |eta| = 12 torch's reference loses
    digits: it computes log C from p = sigmoid(eta), where 1 - 2p cancels; see
    test_continuous_bernoulli_at_large_logits.)"""
    g = torch.Generator().manual_seed(seed)
    wide = 6 * torch.randn(n, generator=g, dtype=torch.float64)
    near = 0.2 * (2 * torch.rand(n // 2, generator=g, dtype=torch.float64) - 1)
    edges = torch.tensor([0.0, 1e-8, -1e-5, CB.TAYLOR_BELOW, -CB.TAYLOR_BELOW,
                          CB.TAYLOR_BELOW * (1 - 1e-9), 12.0, -12.0], dtype=torch.float64)
    return torch.cat([wide.clamp(-12, 12), near, edges])


def test_every_likelihood_is_a_cli_choice_and_a_config_value():
    fit_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
                      if a.dest == "likelihood")
    assert fit_parser.choices == list(LIKELIHOODS)
    for name in LIKELIHOODS:
        cfg = small_config("digits", likelihood=name)
        cfg.validate()
        assert build_model(cfg.model, (1, 8, 8)).likelihood is get(name)
    with pytest.raises(TrainerError, match="unknown likelihood 'poisson': choose one of gaussian, bernoulli, "
                                           "continuous-bernoulli"):
        get("poisson")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_continuous_bernoulli_log_prob_matches_torch(dtype):
    """Per sample (a sum over 8 values) to 1e-5, near the lambda = 1/2 singularity too."""
    eta = logits_with_small_ones(240, seed=1).reshape(-1, 8)  # (N, D)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(eta.shape, generator=g, dtype=torch.float64)
    x[0, :4] = torch.tensor([0.0, 1.0, 0.5, 1e-7])
    expected = Independent(torch_cb(eta), 1).log_prob(x)  # float64 reference, (N,)
    got = CB.log_prob(x.to(dtype), eta.to(dtype), torch.zeros((), dtype=dtype))
    assert got.shape == expected.shape and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-9)


def test_continuous_bernoulli_normaliser_is_smooth_at_the_singularity():
    """log C and the mean against torch in float64 on a fine grid around eta = 0, and no jump
    where the series hands over to the closed form."""
    eta = torch.linspace(-0.3, 0.3, 6001, dtype=torch.float64)
    ref = torch_cb(eta)
    torch.testing.assert_close(CB.log_normaliser(eta), ref._cont_bern_log_norm(), rtol=0, atol=1e-9)
    torch.testing.assert_close(CB.mean(eta), ref.mean, rtol=0, atol=1e-9)
    edge = torch.tensor([CB.TAYLOR_BELOW * (1 - 1e-12), CB.TAYLOR_BELOW], dtype=torch.float64)
    assert abs(float(CB.log_normaliser(edge).diff())) < 1e-10
    assert abs(float(CB.mean(edge).diff())) < 1e-10


@pytest.mark.parametrize("eta", [15.0, -30.0, 80.0, -700.0])
def test_continuous_bernoulli_at_large_logits(eta):
    """log C = log(eta / tanh(eta / 2)) and the mean 1 / (1 - e^-eta) - 1 / eta, in Python's
    float64 math where no cancellation arises for these eta."""
    t = torch.tensor([eta], dtype=torch.float64)
    assert float(CB.log_normaliser(t)) == pytest.approx(math.log(eta / math.tanh(eta / 2)), rel=1e-14)
    mean = 1 / (1 - math.exp(-eta)) - 1 / eta if eta > -700 else -1 / eta
    assert float(CB.mean(t)) == pytest.approx(mean, rel=1e-12)


@pytest.mark.parametrize("eta", [-7.0, -0.8, -0.03, 0.0, 0.004, 0.5, 3.0])
def test_continuous_bernoulli_integrates_to_one(eta):
    """A density on [0, 1]: the integral of exp(log p(x)) is 1 (trapezoid rule, 200,001 points),
    and the integral of x p(x) is mean()."""
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)[:, None]  # (N, D = 1)
    out = torch.full_like(x, eta)
    p = torch.exp(CB.log_prob(x, out, torch.zeros((), dtype=torch.float64)))
    assert float(torch.trapezoid(p, x[:, 0])) == pytest.approx(1.0, abs=1e-8)
    assert float(torch.trapezoid(x[:, 0] * p, x[:, 0])) == pytest.approx(float(CB.mean(out[:1])), abs=1e-8)


def test_the_plain_bernoulli_is_no_density_for_graded_values():
    """Why the continuous Bernoulli exists: p^x (1-p)^(1-x) integrates to less than 1 over [0, 1]."""
    x = torch.linspace(0, 1, 20_001, dtype=torch.float64)[:, None]
    p = torch.exp(LIKELIHOODS["bernoulli"].log_prob(x, torch.zeros_like(x), torch.zeros(())))
    assert float(torch.trapezoid(p, x[:, 0])) == pytest.approx(0.5, abs=1e-6)  # 1 / C(1/2) = 1/2


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_the_output_bias_start_puts_the_decoder_mean_at_the_data_mean(name):
    mean_x = torch.tensor([0.002, 0.1, 0.37, 0.5, 0.51, 0.9, 0.998], dtype=torch.float64)
    lik = get(name)
    torch.testing.assert_close(lik.mean(lik.output_bias_start(mean_x)), mean_x, rtol=0, atol=1e-6)


def test_likelihoods_on_unit_values_refuse_other_data():
    data = load_dataset("gmm2d:n=200", 0)
    LIKELIHOODS["gaussian"].check_data(data)
    with pytest.raises(TrainerError, match=r"gmm2d:n=200: continuous-bernoulli needs values in \[0, 1\] but "
                                           r"the data spans \[-.*\]: use --likelihood gaussian"):
        CB.check_data(data)


def test_a_continuous_bernoulli_run_on_digits(tmp_path):
    """Trains, evaluates with ELBO <= log p(x), and its model's log p(x|z) matches
    torch.distributions to 1e-5 per sample on the test split."""
    out = tmp_path / "cb"
    fit(small_config("digits", likelihood="continuous-bernoulli", epochs=8), out)
    run = load_run(out)
    assert run.config.model.likelihood == "continuous-bernoulli" and run.model.reported_sigma_dec() is None
    result = evaluate_run(run, k=200)
    assert math.isfinite(result["elbo"]) and result["elbo"] <= result["log_px"]
    assert "sigma_dec" not in result
    # continuous densities of values in [0, 1]: far above the plain Bernoulli's "log p(x)" of digits
    assert result["log_px"] > 0
    x = run.load_data().x_test
    q = run.encode(x)
    # (N, D) logits at the posterior means. The decoder drives the pixels that are 0 in every
    # digit to logits near -1000 (the continuous Bernoulli's mean is about -1/eta there), where
    # torch's reference clamps p = sigmoid(eta) at float64's eps and so loses log C; they are
    # compared within |eta| <= 30, where it is exact (larger ones: test_..._at_large_logits).
    # Both in float64: in the model's float32 a sum of 64 terms of about 3 nats each carries
    # rounding of about 1e-5 by itself.
    logits = run.model.decode(q.mu).detach()
    out_z = logits.clamp(-30, 30).double()
    x_flat = x.reshape(len(x), -1).double()
    expected = Independent(torch_cb(out_z), 1).log_prob(x_flat)
    torch.testing.assert_close(run.model.log_px_given_z(x_flat, out_z), expected, rtol=0, atol=1e-5)
    images = run.decode(q.mu[:5]).numpy()
    assert images.min() >= 0 and images.max() <= 1  # decoded means of a density on [0, 1]
    np.testing.assert_allclose(images.reshape(5, -1), CB.mean(logits[:5]).numpy(), rtol=1e-6)


def test_the_model_asks_its_likelihood_for_sigma_dec():
    for name, lik in LIKELIHOODS.items():
        model = build_model(ModelConfig(hidden=[8], latent_dim=2, likelihood=name, sigma_dec=0.2), (4,))
        assert (model.reported_sigma_dec() is not None) == lik.has_sigma_dec
        if lik.has_sigma_dec:
            assert model.reported_sigma_dec() == pytest.approx(0.2)
