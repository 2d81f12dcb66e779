"""Numbers that are never impossible (issue 15): the importance-sampled log p(x) accumulated
stably and with its Monte Carlo standard error, eval --json's standard errors and draws, and
`elbo.reliability`, which says "unreliable: why" instead of showing an impossible figure."""

from __future__ import annotations

import json
import math

import torch
from torch.distributions import Independent, Normal

from trainer import evaluate_run, load_run
from trainer.elbo import elbo_terms, log_px_and_se, reliability
from trainer.model import build_model
from trainer.config import ModelConfig


def small_model(dim: int = 5, latent: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="mlp", hidden=[16], latent_dim=latent), (dim,))


def test_the_standard_error_of_log_px_is_the_spread_of_its_estimates():
    """The delta method's s.e. of a K-sample estimate against the spread of 300 estimates with
    independent draws (the same x and model): its root mean square over those draws matches
    their standard deviation (each single s.e. is itself an estimate from K draws)."""
    model, x = small_model(), torch.randn(6, 5)
    with torch.no_grad():
        model.log_sigma_dec.fill_(0.7)  # weights of moderate spread: the delta method's regime
    k = 50
    draws = [log_px_and_se(model, x, k, torch.Generator().manual_seed(s)) for s in range(300)]
    estimates, ses = torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])
    ratio = ses.pow(2).mean(0).sqrt() / estimates.std(0)  # (N,)
    assert ((ratio > 0.75) & (ratio < 1.25)).all(), ratio
    # one draw has no noise estimate
    assert torch.equal(log_px_and_se(model, x, 1, torch.Generator().manual_seed(0))[1], torch.zeros(6, dtype=torch.float64))


def test_log_px_stays_exact_when_the_posterior_is_far_narrower_than_its_mean():
    """A posterior with sigma = exp(-15) (the log-variance bound) around means near 300:
    z - mu is lost to float32 rounding, so log q(z|x) computed from z is off by nats; the
    estimate takes log q from the noise itself. Reference: the same model and draws in
    float64 (torch.distributions)."""
    model, x = small_model(seed=1), torch.randn(6, 5)
    with torch.no_grad():
        last = model.encoder_net.net[-1]
        last.bias[:2] = 300.0  # mu ~ 300
        last.bias[2:] = -60.0  # raw log-variance far below the bound: logvar = -30
        last.weight[2:] = 0.0
    k, seed = 64, 5
    got = log_px_and_se(model, x, k, torch.Generator().manual_seed(seed))[0]
    m64 = small_model(seed=1).double()
    m64.load_state_dict({n: t.double() for n, t in model.state_dict().items()})
    with torch.no_grad():
        q = m64.encode(x.double())
        eps = torch.randn((k, *q.mu.shape), generator=torch.Generator().manual_seed(seed))
        z = q.mu.float() + q.std.float() * eps  # the float32 draws the model decodes
        out = m64.decode(z.double())
        p_x = Independent(Normal(out, float(m64.sigma_dec)), 1).log_prob(x.double())
        p_z = Independent(Normal(torch.zeros_like(q.mu), 1.0), 1).log_prob(z.double())
        q_z = Independent(Normal(q.mu, q.std), 1).log_prob(q.mu + q.std * eps.double())  # exact z - mu
        expected = torch.logsumexp(p_x + p_z - q_z, 0) - math.log(k)
    assert torch.allclose(got, expected, atol=0.05), (got, expected)


def test_eval_json_reports_standard_errors_and_draws(cli, table_runs):
    run_dir = table_runs["wine"]
    result = cli("eval", run_dir, "--json", "--threads", "1", "--k", "200", "--mc-samples", "3", "--device", "cpu")
    assert result.status == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["draws"] == {"recon": 3, "elbo": 3, "kl": 0, "log_px": 200}
    assert out["k"] == 200 and out["mc_samples"] == 3 and out["reliability"] is None
    # the standard errors of the means, from the per-sample figures computed here
    run = load_run(run_dir)
    x = run.load_data().x_test
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        eps = torch.randn((3, len(x), run.model.latent_dim), generator=gen)
        t = elbo_terms(run.model, x, eps=eps)
        lp, _ = log_px_and_se(run.model, x, 200, gen)
    n = len(x)
    for key, values in (("elbo", t["elbo"]), ("recon", t["recon"]), ("kl", t["kl"]), ("log_px", lp),
                        ("gap", lp - t["elbo"].double())):
        values = values.double()
        assert math.isclose(out[key], float(values.mean()), rel_tol=1e-6, abs_tol=1e-6), key
        assert math.isclose(out[f"{key}_se"], float(values.std() / math.sqrt(n)), rel_tol=1e-5), key
    assert out["gap"] > -3 * out["gap_se"]


def test_reliability_says_why_a_figure_cannot_be_shown():
    assert reliability(-10.0, -11.0, 0.2) is None
    assert reliability(-11.1, -11.0, 0.2) is None  # below the ELBO, but within the noise
    why = reliability(-12.0, -11.0, 0.2)
    assert why.startswith("unreliable: ") and "below the ELBO" in why and "0.2" in why
    assert "one draw" in reliability(-11.5, -11.0)  # no noise estimate: any negative gap
    assert reliability(-11.5, -11.0, log_px_se=0.3, elbo_se=0.4) is None  # 3 * 0.5 > 0.5
    assert "NaN" in reliability(float("nan"), -11.0, 0.2)
    assert "the ELBO is infinite" in reliability(-11.0, float("-inf"))
    assert reliability(None, -11.0) is None  # log p(x) not estimated
    narrow = reliability(-10.0, -11.0, 0.2, mu=[12.0, 0.5], logvar=[-30.0, -1.0])
    assert narrow.startswith("unreliable: the posterior's standard deviation")
    assert reliability(-10.0, -11.0, 0.2, mu=[0.01, 0.5], logvar=[-30.0, -1.0]) is None  # fine near 0
    assert "\n" not in why and "\n" not in narrow


def test_the_degenerate_case_gives_finite_figures_and_says_what_is_unreliable(table_runs):
    """Wine in its own units without standardisation (issue 15's report: KL of 60-73 nats,
    posterior sigmas of 1e-30, gaps of -1 and NaN): every figure is finite, no sample's gap
    is negative beyond its noise, and the samples whose posterior is narrower than float32
    can resolve are named unreliable, with the reason."""
    run = load_run(table_runs["wine-unscaled"])
    x = run.load_data().x_test
    terms = run.elbo_terms(x, mc_samples=4)
    lp, lp_se = run.log_px_and_se(x, k=500)
    for t in (terms["elbo"], terms["recon"], terms["kl"], terms["logvar"], lp, lp_se):
        assert torch.isfinite(t).all()
    gap = lp - terms["elbo"].double()
    se = torch.hypot(lp_se, terms["recon_se"].double())
    assert (gap > -3 * se).all(), gap.min()
    verdicts = [reliability(float(lp[i]), float(terms["elbo"][i]), log_px_se=float(lp_se[i]),
                            elbo_se=float(terms["recon_se"][i]), mu=terms["mu"][i], logvar=terms["logvar"][i])
                for i in range(len(x))]
    flagged = [v for v in verdicts if v is not None]
    assert flagged and all(v.startswith("unreliable: the posterior's standard deviation") for v in flagged)
    # eval's test-set means count those samples and say so rather than give a number to trust
    ev = evaluate_run(run, "test", k=100)
    assert ev["posteriors_unresolved"] == len(flagged), (ev["posteriors_unresolved"], len(flagged))
    assert ev["reliability"].startswith(f"unreliable: {len(flagged)} of {len(x)} samples have a posterior"), ev
    # the same table standardised (the default): no posterior is too narrow, and the means
    # are believable
    ok = load_run(table_runs["wine"])
    t = ok.elbo_terms(x, mc_samples=4)
    lp, lp_se = ok.log_px_and_se(x, k=500)
    verdicts = [reliability(float(lp[i]), float(t["elbo"][i]), log_px_se=float(lp_se[i]),
                            elbo_se=float(t["recon_se"][i]), mu=t["mu"][i], logvar=t["logvar"][i])
                for i in range(len(x))]
    assert not any(v and "posterior" in v for v in verdicts)
    gap = lp - t["elbo"].double()
    assert reliability(float(lp.mean()), float(t["elbo"].mean()), float(gap.std() / math.sqrt(len(x)))) is None
    ev = evaluate_run(ok, "test", k=100)
    assert ev["posteriors_unresolved"] == 0 and ev["reliability"] is None, ev
