"""What the "Inside the ELBO" page shows, computed from a trained run (no streamlit here).

Each function takes a `trainer.Run` (and a test sample or the encoded test set) and returns
plain numbers and arrays; explorer/services/cached_elbo.py memoises them per checkpoint.
The mathematics lives in trainer/posterior.py. Every number is per sample, in nats, with
the sign of a log-likelihood (higher is better); every Monte Carlo number comes with the
draws it used and its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer import Run, posterior
from trainer.data import DATASETS, parse_spec
from trainer.examples import linear_gaussian_entropy

M_CHOICES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # the reparameterization slider's M
M_MAX = M_CHOICES[-1]
ELBO_M = 100  # draws of z for a sample's ELBO (the ELBO breakdown page's M)
IS_K = 1000  # importance samples for a sample's log p(x) (the ELBO breakdown page's K)
IWAE_K = 100  # importance samples per test sample over the test set (the Runs table's K)
GRAD_M = 2000  # draws for the gradient-estimator comparison
TEST_SUBSET = 100  # test samples the test-set comparisons average over
QUADRATURE_BUDGET = 20_000  # ... fewer where the quadrature's decodes are large: n * D at most this
DISPLAY_SIDE = 160  # a heat map's cells per axis at most (the grid itself is finer)


def _x(run: Run, x) -> torch.Tensor:
    """One sample x as the model's input (1, *data_shape): a copy (the encoded test set's arrays
    are read-only, shared by every session)."""
    return torch.tensor(np.asarray(x, dtype=np.float32)).reshape(1, *run.model.data_shape)


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def shown_dims(kl_per_dim: np.ndarray) -> tuple[int, int]:
    """The two latent dimensions a plane shows: (0, 1) for d <= 2, else the two of largest mean KL."""
    kl = np.asarray(kl_per_dim, dtype=float)
    kl = kl.mean(0) if kl.ndim == 2 else kl  # (N, d) per sample, or (d,) already averaged
    if len(kl) <= 2:
        return 0, min(1, len(kl) - 1)
    a, b = np.argsort(-kl)[:2]
    return int(a), int(b)


# -- 1. the reparameterization trick -------------------------------------------------------------

@dataclass
class Reparameterization:
    """M_MAX draws for one x: z = mu + sigma * eps (eq 1.22-1.24) and log p(x|z_m) (eq 1.33)."""

    eps: np.ndarray  # (M_MAX, d)
    z: np.ndarray  # (M_MAX, d)
    log_px_given_z: np.ndarray  # (M_MAX,) nats
    estimate: np.ndarray  # (M_MAX,) E_q[log p(x|z)] by Monte Carlo with the first M draws (eq 1.31)
    se: np.ndarray  # (M_MAX,) its standard error, sd / sqrt(M) (NaN at M = 1)
    mu: np.ndarray  # (d,) q's mean
    sigma: np.ndarray  # (d,) q's standard deviations
    exact: float | None  # E_q[log p(x|z)] in closed form (linear + Gaussian runs), else None


def reparameterization(run: Run, x, seed: int = 0) -> Reparameterization:
    r = posterior.recon_draws(run.model, _x(run, x), M_MAX, seed)
    est, se = posterior.running_estimate(r["log_px_given_z"])
    exact = None
    if posterior.has_closed_forms(run.model):
        exact = float(posterior.linear_closed_forms(run.model, _x(run, x))["recon"][0])
    return Reparameterization(r["eps"].numpy(), r["z"].numpy(), r["log_px_given_z"].numpy(), est.numpy(),
                              se.numpy(), r["mu"].numpy(), r["sigma"].numpy(), exact)


def gradient_comparison(run: Run, x, m: int = GRAD_M, seed: int = 1) -> dict:
    """The two estimators of d E_q[log p(x|z)] / d(mu, sigma) with the same m draws: for each,
    its mean and standard error per component and its per-draw variance (summed over the 2d
    components); `ratio` = score-function variance / reparameterized variance."""
    g = posterior.gradient_estimators(run.model, _x(run, x), m, seed)
    d = run.model.latent_dim
    names = [f"d/dmu{j + 1}" for j in range(d)] + [f"d/dsigma{j + 1}" for j in range(d)]
    out = {"m": m, "components": names}
    for key in ("score", "reparam"):
        out[key] = posterior.estimator_summary(g[key])
        out[key]["per_component_variance"] = g[key].var(0).tolist()
    out["ratio"] = out["score"]["total_variance"] / max(out["reparam"]["total_variance"], 1e-300)
    return out


def importance(run: Run, x, seed: int = 1) -> dict:
    """One x's importance-sampled log p(x) with K = IS_K draws and its s.e. (delta method)."""
    return posterior.log_px_importance(run.model, _x(run, x), IS_K, seed)


# -- 2. the true posterior against q --------------------------------------------------------------

def true_posterior(run: Run, x, seed: int = 0) -> dict:
    """For one x of a model with d <= 2: p(z|x) on its grid (for the picture), and Fig 1.4's
    three estimates of log p(x) — quadrature (the grid's normaliser), importance sampling
    (K = IS_K) and the ELBO (M = ELBO_M) — with the gap read two ways: log p(x) - ELBO, and
    KL(q(z|x) || p(z|x)) computed on the grid directly."""
    xt = _x(run, x)
    g = posterior.posterior_grid(run.model, xt)
    axes = [a.numpy() for a in g.axes]
    density = g.log_posterior.exp().numpy()
    if len(axes) == 2:
        k = [max(1, math.ceil(len(a) / DISPLAY_SIDE)) for a in axes]
        axes = [a[::ki] for a, ki in zip(axes, k)]
        density = density[::k[0], ::k[1]]
    imp = posterior.log_px_importance(run.model, xt, IS_K, seed + 1)
    r = posterior.recon_draws(run.model, xt, ELBO_M, seed)
    recon, recon_se = _mean_se(r["log_px_given_z"].numpy())
    kl = float(run.encode(xt).kl()[0])
    elbo = recon - kl
    return {"axes": axes, "density": density, "mu": g.mu.numpy(), "sigma": g.sigma.numpy(), "cells": g.cells,
            "log_px_quadrature": g.log_px, "kl_to_posterior": g.kl_to_posterior,
            "log_px_is": imp["log_px"], "log_px_is_se": imp["se"], "k": IS_K,
            "elbo": elbo, "elbo_se": recon_se, "recon": recon, "kl": kl, "m": ELBO_M,
            "gap_from_estimates": g.log_px - elbo}


# -- 3. Theorem 1.1 with exact numbers ---------------------------------------------------------

def theorem_for_sample(run: Run, x) -> dict | None:
    """The linear + Gaussian model's exact ELBO, KL(q || p(z|x)) and log p_theta(x) for one x
    (eq 1.6 to rounding), or None for a model without closed forms."""
    if not posterior.has_closed_forms(run.model):
        return None
    cf = posterior.linear_closed_forms(run.model, _x(run, x))
    return {k: float(cf[k][0]) for k in ("elbo", "recon", "kl", "kl_to_posterior", "model_log_px")}


def distance_from_truth(run: Run, x_test, n: int = TEST_SUBSET, seed: int = 0) -> dict:
    """Over the first n test samples (fewer for a large quadrature: QUADRATURE_BUDGET), per-sample
    means (nats) and the standard error of each:

      data_log_px    the data's own exact log p(x) (gmm2d, linear-gaussian), else absent
      model_log_px   the model's log p_theta(x): closed form (linear + Gaussian), quadrature
                     (d <= 2) or, failing both, the importance-sampled estimate (K = IS_K)
      iwae           the importance-sampled log p(x), K = IWAE_K (a lower bound on model_log_px)
      elbo           exact (linear + Gaussian) or by Monte Carlo with ELBO_M draws
    and the two distances: model_wrong = data_log_px - model_log_px (an estimate of
    KL(p_data || p_theta) >= 0) and encoder_wrong = model_log_px - elbo (the mean KL from q
    to the true posterior, eq 1.6); the s.e. of each is of the paired per-sample differences."""
    data = run.load_data()
    model = run.model
    if not posterior.has_closed_forms(model) and model.latent_dim <= 2:  # about 10,000 decodes per sample
        n = min(n, max(10, QUADRATURE_BUDGET // model.data_dim))
    x = torch.tensor(np.asarray(x_test[:n], dtype=np.float32))  # a copy: the arrays are read-only
    gen = torch.Generator().manual_seed(seed)
    from trainer.elbo import elbo_terms, log_px

    with torch.no_grad():
        iwae = log_px(model, x, IWAE_K, torch.Generator().manual_seed(seed + 1)).double().numpy()
    if posterior.has_closed_forms(model):
        cf = posterior.linear_closed_forms(model, x)
        model_lp, elbo, how = cf["model_log_px"].numpy(), cf["elbo"].numpy(), "closed form"
        elbo_how = "closed form"
    else:
        with torch.no_grad():
            elbo = elbo_terms(model, x, ELBO_M, gen)["elbo"].double().numpy()
        elbo_how = f"Monte Carlo, M = {ELBO_M}"
        if model.latent_dim <= 2:
            model_lp, how = posterior.log_px_quadrature(model, x).numpy(), "quadrature"
        else:
            with torch.no_grad():
                model_lp = log_px(model, x, IS_K, torch.Generator().manual_seed(seed + 2)).double().numpy()
            how = f"importance sampled, K = {IS_K}"
    out = {"n": len(x), "model_log_px_how": how, "elbo_how": elbo_how, "iwae_k": IWAE_K}
    for name, v in (("model_log_px", model_lp), ("iwae", iwae), ("elbo", elbo)):
        out[name], out[name + "_se"] = _mean_se(v)
    out["encoder_wrong"], out["encoder_wrong_se"] = _mean_se(model_lp - elbo)
    if data.exact_log_px is not None:
        exact = data.exact_log_px(x).double().numpy()
        out["data_log_px"], out["data_log_px_se"] = _mean_se(exact)
        out["model_wrong"], out["model_wrong_se"] = _mean_se(exact - model_lp)
    return out


# -- 4. the linear example's landscape (Examples 1.3-1.6) -----------------------------------------

def linear_gaussian_setting(run: Run) -> tuple[int, float] | None:
    """(d, sigma) of a run on the built-in linear-gaussian data, or None for other data."""
    name, options = parse_spec(run.config.data)
    if name != "linear-gaussian":
        return None
    values = {o.key: o.read(dict(options), run.config.data) for o in DATASETS[name].options}
    return int(values["d"]), float(values["sigma"])


def saved_path(run: Run) -> dict[str, np.ndarray] | None:
    """A linear run's (t, s) per epoch as saved while it trained (trainer.api.LINEAR_PATH):
    epoch, t, s arrays, or None when it has none."""
    from trainer.api import read_linear_path

    rows = read_linear_path(run.path)
    if not rows:
        return None
    return {k: np.array([r[k] for r in rows], dtype=float) for k in ("epoch", "t", "s")}


def linear_landscape(d: int, sigma: float, n: int = 120) -> dict:
    """ELBO(t, s), recon and KL of the hand-set linear VAE (vae-math.md), expected over the
    data, on a grid of t and s (log-spaced); elbo_t1, its value at t = 1, s = sigma, and the
    data's exact mean log p(x), -entropy, which t, s -> 0 reach."""
    t = np.geomspace(0.05, 3.0, n)
    s = np.geomspace(0.05 * sigma, 3.0 * sigma, n)
    g = posterior.hand_set_elbo_grid(torch.tensor(t), torch.tensor(s), d, sigma)
    at_t1 = posterior.hand_set_elbo_grid(torch.tensor([1.0]), torch.tensor([sigma]), d, sigma)["elbo"]
    return {"t": t, "s": s, **{k: v.numpy() for k, v in g.items()}, "d": d, "sigma": sigma,
            "elbo_t1": float(at_t1), "data_log_px": -linear_gaussian_entropy(d, sigma)}


# -- 5. where the KL goes -----------------------------------------------------------------------

def kl_split(mu: np.ndarray, logvar: np.ndarray, draws: int = 8, seed: int = 0) -> dict:
    """mean KL = I_q(x; z) + KL(q(z) || p(z)) over the test set, each with its s.e.
    (trainer.posterior.kl_split), and z ~ q(z|x) for every test x (the aggregate posterior's
    samples, (N * draws, d)) for the per-dimension histograms against N(0, 1)."""
    out = posterior.kl_split(mu, logvar, draws, seed)
    gen = np.random.default_rng(seed)
    mu, sd = np.asarray(mu, dtype=float), np.exp(0.5 * np.asarray(logvar, dtype=float))
    out["codes_z"] = (mu[None] + sd[None] * gen.standard_normal((draws, *mu.shape))).reshape(-1, mu.shape[1])
    out["draws_per_code"] = draws
    return out
