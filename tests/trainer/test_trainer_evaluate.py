"""trainer.elbo.evaluate, the one loop over a data set: its sums against elbo_terms on the
whole set at once, the active-unit rule against torch.var, and shares that add up to the
whole (what the multi-process test pass relies on)."""

from __future__ import annotations

import torch

from trainer.config import ModelConfig
from trainer.elbo import ACTIVE_UNIT_THRESHOLD, elbo_terms, evaluate
from trainer.model import build_model


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden=[16], latent_dim=3, sigma_dec=0.5), (6,)).double()


def test_sums_and_per_sample_terms_match_elbo_terms_with_the_same_noise():
    model, x = small_model(), torch.randn(50, 6, dtype=torch.float64)
    ev = evaluate(model, x, mc_samples=2, seed=4, batch_size=50, keep_per_sample=True)
    gen = torch.Generator().manual_seed(4)
    eps = torch.randn((2, 50, 3), generator=gen, dtype=torch.float64)  # evaluate's first draw
    with torch.no_grad():
        t = elbo_terms(model, x, eps=eps)
    for key in ("elbo", "recon", "kl"):
        torch.testing.assert_close(ev.per_sample[key], t[key].detach())
        assert abs(ev.means()[key] - float(t[key].mean())) < 1e-12
    torch.testing.assert_close(ev.kl_per_dim / ev.n, t["kl_per_dim"].mean(0).detach())
    assert ev.keys == ("elbo", "recon", "kl") and ev.n == 50


def test_batches_see_one_noise_stream_and_the_same_seed_gives_the_same_numbers():
    model, x = small_model(), torch.randn(37, 6, dtype=torch.float64)
    a = evaluate(model, x, seed=1, batch_size=10)
    b = evaluate(model, x, seed=1, batch_size=10)
    c = evaluate(model, x, seed=2, batch_size=10)
    assert torch.equal(a.sums, b.sums) and not torch.equal(a.sums, c.sums)


def test_active_units_follow_the_variance_of_the_posterior_means():
    model, x = small_model(1), torch.randn(400, 6, dtype=torch.float64)
    ev = evaluate(model, x, batch_size=64, keep_per_sample=True)
    expected = ev.per_sample["mu"].var(0) > ACTIVE_UNIT_THRESHOLD  # unbiased, over all samples
    assert torch.equal(ev.active_dims(), expected) and ev.active_units == int(expected.sum())
    with torch.no_grad():  # an encoder mean that ignores x: no unit is active
        model.encoder_net.net[-1].weight.zero_()
    assert evaluate(model, x).active_units == 0


def test_shares_add_up_to_the_whole_evaluation():
    """Three 'processes' each take every third batch but draw every batch's noise; their
    reduced sums equal one process's (here the reduction is a plain sum of the shares)."""
    model, x = small_model(2), torch.randn(95, 6, dtype=torch.float64)
    whole = evaluate(model, x, seed=3, batch_size=20)
    shares = [evaluate(model, x, seed=3, batch_size=20, share=(r, 3)) for r in range(3)]
    flats = [torch.cat([s.sums, s.sq_sums, s.kl_per_dim, s.mu_sum, s.mu_sq_sum, s.unresolved]) for s in shares]
    total = shares[0].reduced(lambda t: sum(flats))
    torch.testing.assert_close(total.sums, whole.sums)
    torch.testing.assert_close(total.sq_sums, whole.sq_sums)
    torch.testing.assert_close(total.kl_per_dim, whole.kl_per_dim)
    assert torch.equal(total.active_dims(), whole.active_dims())
    assert total.unresolved_posteriors == whole.unresolved_posteriors
    assert all(not torch.equal(s.sums, whole.sums) for s in shares)  # each alone is only a part


def test_log_px_and_an_exact_density_are_added_when_asked_for():
    model, x = small_model(), torch.randn(30, 6, dtype=torch.float64)
    exact = lambda xs: -0.5 * xs.pow(2).sum(-1)  # noqa: E731 - any per-sample function of the CPU batch
    ev = evaluate(model, x, k=50, exact_log_px=exact, batch_size=7)
    means = ev.means()
    assert ev.keys == ("elbo", "recon", "kl", "log_px", "gap", "exact_log_px")
    assert abs(means["exact_log_px"] - float(exact(x).mean())) < 1e-12
    assert means["log_px"] > means["elbo"]  # K = 50 importance samples tighten the bound
