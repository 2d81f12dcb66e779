"""Inside the ELBO: the true posterior, exact log p(x) and the estimators of chapter 1.

Everything here is per sample, in nats, with the sign of a log-likelihood (higher is
better), computed in float64 from a trained model (vae-math.md's numbering):

    posterior_grid(model, x)       p_theta(z|x) on a grid (d <= 2), log p_theta(x) by
                                   quadrature (the normaliser) and KL(q(z|x) || p_theta(z|x))
                                   from the same grid (Theorem 1.1, eq 1.6; Fig 1.4)
    log_px_quadrature(model, x)    that log p_theta(x) for every row of x, (N,)
    linear_closed_forms(model, x)  the `linear` architecture with a Gaussian likelihood: the
                                   model's marginal N(b, W W^T + s^2 I), its Gaussian posterior,
                                   the exact ELBO and KL(q || p_theta(z|x)) (Theorem 1.3, eq 1.25)
    kl_split(mu, logvar)           mean KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z))
                                   (Hoffman and Johnson 2016), each with a standard error
    recon_draws(model, x, M)       the reparameterized draws z = mu + sigma * eps (eq 1.22-1.24)
                                   and log p(x|z_m): E_q[log p(x|z)] by Monte Carlo (eq 1.31)
    gradient_estimators(model, x)  d E_q[log p(x|z)] / d(mu, sigma) per draw, score function
                                   against reparameterized (eq 1.20): same mean, measured variance
    linear_path_point(model)       (t, s) of a linear run: the encoder's sigma and sigma_dec
                                   (Examples 1.3-1.6), saved per epoch by api.fit

Nothing here draws noise without a seed: the same model, x and seed give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .likelihoods import LOG_2PI
from .model import VAE, bounded_logvar, log_standard_normal

GRID_HALF_WIDTH = 8.0  # the grid spans mu +- this many sigma of q, and of the posterior found
GRID_STEPS_PER_SIGMA = 4  # cells per standard deviation of the narrower of q and p(z|x)
MAX_GRID_SIDE = {1: 4000, 2: 320}  # cells per axis at most (d = 2: about 100,000 decodes)
WIDE_BOX = 6.0  # the first, coarse pass covers the prior's [-6, 6]^d and q's box
COARSE_SIDE = {1: 1000, 2: 64}  # cells per axis of the coarse pass


def _tensor(a, dtype: torch.dtype) -> torch.Tensor:
    """a (a tensor or an array) as a tensor of dtype. A read-only numpy array (the app shares
    its arrays between sessions read-only) is copied first: torch cannot wrap one."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        a = a.copy()
    return torch.as_tensor(a, dtype=dtype)


def _as_batch(model: VAE, x) -> torch.Tensor:
    x = _tensor(x, next(model.parameters()).dtype)  # the model's own precision
    return x.reshape(-1, *model.data_shape)


@torch.no_grad()
def _log_joint(model: VAE, x: torch.Tensor, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """log p(x|z) + log p(z) for one x (1, *shape) at each z (G, d): (G,) float64, nats."""
    x_flat = x.reshape(1, -1)
    out = []
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk]
        dec = model.decode(zc.to(next(model.parameters()).dtype)[:, None, :])  # (g, 1, D)
        out.append(model.log_px_given_z(x_flat, dec)[:, 0].double() + log_standard_normal(zc.double()))
    return torch.cat(out)


def _axes(lo: torch.Tensor, hi: torch.Tensor, step: torch.Tensor, side_max: int) -> list[torch.Tensor]:
    """Cell centres per axis: from lo to hi at `step` (per axis), at most side_max cells."""
    axes = []
    for a, b, h in zip(lo.tolist(), hi.tolist(), step.tolist()):
        n = int(min(side_max, max(32, math.ceil((b - a) / h))))
        edges = torch.linspace(a, b, n + 1, dtype=torch.float64)
        axes.append((edges[:-1] + edges[1:]) / 2)
    return axes


def _mesh(axes: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))  # (G, d)


def _weighted_moments(z: torch.Tensor, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.softmax(log_w, 0)[:, None]  # (G, 1)
    mean = (w * z).sum(0)
    sd = (w * (z - mean).pow(2)).sum(0).sqrt()
    return mean, sd


@dataclass
class PosteriorGrid:
    """p_theta(z|x) on a regular grid of cell centres around q(z|x), for one x (d <= 2)."""

    axes: list[torch.Tensor]  # d tensors (n_j,): the cell centres along each latent axis
    log_posterior: torch.Tensor  # (n_1, ..., n_d) log p_theta(z|x), a density (normalised on the grid)
    log_px: float  # log p_theta(x) = log sum_g p(x|z_g) p(z_g) * cell area (quadrature), nats
    kl_to_posterior: float  # KL(q(z|x) || p_theta(z|x)) = sum_g q (log q - log p(z|x)) * area
    elbo: float  # the ELBO by the same quadrature: log_px - kl_to_posterior (eq 1.6)
    mu: torch.Tensor  # (d,) q's mean
    sigma: torch.Tensor  # (d,) q's standard deviations
    cells: int  # grid cells used (the draws of this estimate: none, it is deterministic)


@torch.no_grad()
def posterior_grid(model: VAE, x, half_width: float = GRID_HALF_WIDTH,
                   steps_per_sigma: int = GRID_STEPS_PER_SIGMA) -> PosteriorGrid:
    """The true posterior of one sample x (*shape) of a model with d <= 2 latent dimensions.

    The posterior is often much narrower than the prior, so the grid is sized from q(z|x):
    a coarse first pass over the prior's box and q's finds where p(z|x) has its mass (its mean
    and sd); the fine pass then spans mu +- half_width sigma of q and of that posterior, with
    `steps_per_sigma` cells per sd of the narrower of the two (vae-math.md, quadrature)."""
    d = model.latent_dim
    if d > 2:
        raise ValueError(f"quadrature needs d <= 2 latent dimensions, this model has {d}")
    x = _as_batch(model, x)[:1]
    q = model.encode(x)
    mu, sigma = q.mu[0].double(), q.std.expand_as(q.mu)[0].double()
    side = MAX_GRID_SIDE[d]
    # pass 1: coarse, over the prior's box and q's box
    lo = torch.minimum(mu - half_width * sigma, torch.full_like(mu, -WIDE_BOX))
    hi = torch.maximum(mu + half_width * sigma, torch.full_like(mu, WIDE_BOX))
    z = _mesh(_axes(lo, hi, (hi - lo) / COARSE_SIDE[d], COARSE_SIDE[d]))
    m_post, sd_post = _weighted_moments(z, _log_joint(model, x, z))
    sd_post = torch.maximum(sd_post, (hi - lo) / 1000)  # a posterior narrower than a cell: the cell
    # pass 2: fine, where q and the posterior have their mass
    lo = torch.minimum(mu - half_width * sigma, m_post - half_width * sd_post)
    hi = torch.maximum(mu + half_width * sigma, m_post + half_width * sd_post)
    step = torch.minimum(sigma, sd_post) / steps_per_sigma
    axes = _axes(lo, hi, step, side)
    z = _mesh(axes)
    log_area = sum(math.log(float(a[1] - a[0])) for a in axes)
    log_joint = _log_joint(model, x, z)
    log_px = float(torch.logsumexp(log_joint, 0)) + log_area
    log_post = log_joint - log_px  # (G,) log p_theta(z|x)
    log_q = -0.5 * (((z - mu) / sigma).pow(2) + 2 * sigma.log() + LOG_2PI).sum(-1)  # (G,)
    q_mass = torch.softmax(log_q, 0)  # q's probability per cell (normalised on the grid)
    kl = float((q_mass * (log_q - log_post)).sum())
    shape = tuple(len(a) for a in axes)
    return PosteriorGrid(axes, log_post.reshape(shape), log_px, kl, log_px - kl, mu, sigma, len(z))


def log_px_quadrature(model: VAE, x) -> torch.Tensor:
    """log p_theta(x) by quadrature on each sample's posterior grid: (N,) float64, nats."""
    x = _as_batch(model, x)
    return torch.tensor([posterior_grid(model, xi).log_px for xi in x], dtype=torch.float64)


# -- the linear model's closed forms (vae-math.md, "closed forms and identities") -------------

def has_closed_forms(model: VAE) -> bool:
    """The `linear` architecture with a Gaussian likelihood: marginal and posterior are Gaussian."""
    return model.cfg.arch == "linear" and model.likelihood.name == "gaussian"


@torch.no_grad()
def linear_closed_forms(model: VAE, x) -> dict[str, torch.Tensor]:
    """For a decoder f(z) = W z + b, p(x|z) = N(W z + b, s^2 I), p(z) = N(0, I), and the
    encoder's q(z|x) = N(mu, diag v), per sample (N,) float64, nats:

      model_log_px   log N(x | b, W W^T + s^2 I)                      the model's marginal
      recon          -(D/2) log(2 pi s^2) - (||x - W mu - b||^2 + tr(W^T W diag v)) / (2 s^2)
      kl             KL(q(z|x) || N(0, I))                             (eq 1.34)
      elbo           recon - kl, exactly (no Monte Carlo)              (eq 1.10)
      kl_to_posterior  KL(q(z|x) || N(m(x), S)), S = (I + W^T W / s^2)^-1,
                     m(x) = S W^T (x - b) / s^2                        (Theorem 1.3, eq 1.25)
    and post_mean (N, d), post_cov (d, d). Theorem 1.1 (eq 1.6): elbo + kl_to_posterior =
    model_log_px, for every x and any encoder."""
    if not has_closed_forms(model):
        raise ValueError("closed forms need the linear architecture with a Gaussian likelihood")
    x = _as_batch(model, x)
    q = model.encode(x)
    mu, v = q.mu.double(), torch.exp(q.logvar).expand_as(q.mu).double()  # (N, d)
    xf = x.reshape(len(x), -1).double()  # (N, D)
    W = model.decoder_net.weight.double()  # (D, d)
    b = model.decoder_net.bias.double()  # (D,)
    s2 = float(model.sigma_dec.double()) ** 2
    D, d = W.shape
    # the marginal N(b, C), C = W W^T + s^2 I, by its Cholesky factor
    C = W @ W.T + s2 * torch.eye(D, dtype=torch.float64)
    L = torch.linalg.cholesky(C)
    r = torch.linalg.solve_triangular(L, (xf - b).T, upper=False)  # (D, N)
    model_log_px = -0.5 * (r.pow(2).sum(0) + D * LOG_2PI) - torch.log(torch.diagonal(L)).sum()
    # the ELBO: the expectation of a quadratic under q, and the KL to the prior
    resid = xf - mu @ W.T - b  # (N, D)
    wtw = W.T @ W  # (d, d)
    recon = -0.5 * D * math.log(2 * math.pi * s2) - (resid.pow(2).sum(1) + (v * torch.diagonal(wtw)).sum(1)) / (2 * s2)
    kl = 0.5 * (v + mu.pow(2) - 1.0 - v.log()).sum(1)
    # the true posterior N(m(x), S) and KL(q || it) (Theorem 1.3)
    prec = torch.eye(d, dtype=torch.float64) + wtw / s2  # S^-1
    S = torch.linalg.inv(prec)
    m = (xf - b) @ W @ S / s2  # (N, d); S is symmetric
    dm = m - mu
    kl_post = 0.5 * ((torch.diagonal(prec) * v).sum(1) - d + ((dm @ prec) * dm).sum(1)
                     + torch.logdet(S) - v.log().sum(1))
    return {"model_log_px": model_log_px, "recon": recon, "kl": kl, "elbo": recon - kl,
            "kl_to_posterior": kl_post, "post_mean": m, "post_cov": S}


def linear_path_point(model: VAE) -> dict[str, float]:
    """Where a linear run stands in the (t, s) plane of Examples 1.3-1.6: t = the encoder's
    sigma (RMS over latent dimensions; it does not depend on x in this architecture) and
    s = sigma_dec (the decoder's noise sd)."""
    logvar = bounded_logvar(model.encoder_net.logvar.detach().double())  # (d,), as encode() bounds it
    t = float(torch.exp(logvar).mean().sqrt())
    return {"t": t, "s": float(model.sigma_dec.detach())}


def hand_set_elbo_grid(t: torch.Tensor, s: torch.Tensor, d: int, sigma: float) -> dict[str, torch.Tensor]:
    """Examples 1.3-1.6's ELBO(t, s) (vae-math.md) expected over the data, where
    E||(x - mu)/sigma||^2 = d: recon, kl and elbo on the grid t (T,) x s (S,), each (S, T)."""
    tt, ss = t.double()[None, :], s.double()[:, None]
    recon = -0.5 * d * torch.log(2 * math.pi * ss**2) - sigma**2 * tt**2 * d / (2 * ss**2)
    kl = 0.5 * (tt**2 * d - d + d - 2 * d * torch.log(tt)).expand_as(recon)
    return {"recon": recon, "kl": kl, "elbo": recon - kl}


# -- where the KL goes ---------------------------------------------------------------------------

def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")


@torch.no_grad()
def kl_split(mu, logvar, draws: int = 8, seed: int = 0, max_codes: int = 2000) -> dict[str, float]:
    """mean_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)) (Hoffman and Johnson 2016).

    mu, logvar (N, d): the codes of a data set. q(z) = (1/N) sum_n q(z|x_n), the aggregate
    posterior (the first `max_codes` codes when there are more: then the split is that
    subset's). For each code n, `draws` z ~ q(z|x_n) give
        I_q(x; z)         ~ mean of log q(z|x_n) - log q(z)
        KL(q(z) || p(z))  ~ mean of log q(z) - log p(z)
    Returns each with its standard error (over the codes: each code's mean over its draws is
    one independent term), the closed-form mean KL and the draws used (N * draws)."""
    mu = _tensor(mu, torch.float64)
    logvar = _tensor(logvar, torch.float64).expand_as(mu)[:max_codes]
    mu = mu[:max_codes]
    n, d = mu.shape
    sd = torch.exp(0.5 * logvar)
    gen = torch.Generator().manual_seed(seed)
    z = mu + sd * torch.randn((draws, n, d), generator=gen, dtype=torch.float64)  # (S, N, d)
    log_qn = -0.5 * (((z - mu) / sd).pow(2) + logvar + LOG_2PI).sum(-1)  # (S, N): log q(z|x_n)
    log_p = log_standard_normal(z)  # (S, N)
    log_agg = torch.empty(draws, n, dtype=torch.float64)
    for start in range(0, n, 256):  # log q(z) = logsumexp_m log q(z|x_m) - log N, 256 codes at a time
        zc = z[:, start:start + 256, None, :]  # (S, c, 1, d)
        lq = -0.5 * (((zc - mu) / sd).pow(2) + logvar + LOG_2PI).sum(-1)  # (S, c, N)
        log_agg[:, start:start + 256] = torch.logsumexp(lq, -1) - math.log(n)
    mi, mi_se = _mean_se((log_qn - log_agg).mean(0))
    agg, agg_se = _mean_se((log_agg - log_p).mean(0))
    kl = 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(-1)  # (N,), eq 1.34
    return {"mutual_info": mi, "mutual_info_se": mi_se, "kl_aggregate": agg, "kl_aggregate_se": agg_se,
            "mean_kl": float(kl.mean()), "codes": n, "draws": n * draws, "max_mutual_info": math.log(n)}


# -- the reparameterization trick and the two gradient estimators -----------------------------

@torch.no_grad()
def recon_draws(model: VAE, x, m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """M reparameterized draws for one x (*shape): eps ~ N(0, I), z = mu + sigma * eps
    (eq 1.22-1.24), and log p(x|z_m) per draw (eq 1.33, constant included). Returns eps, z
    (M, d), log_px_given_z (M,) float64 and q's mu, sigma (d,). The Monte Carlo estimate of
    E_q[log p(x|z)] with the first M' draws is their mean, its standard error sd / sqrt(M')."""
    x = _as_batch(model, x)[:1]
    q = model.encode(x)
    mu, sigma = q.mu[0], q.std.expand_as(q.mu)[0]
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn((m, model.latent_dim), generator=gen, dtype=mu.dtype)
    z = mu + sigma * eps  # (M, d)
    lp = model.log_px_given_z(x.reshape(1, -1), model.decode(z[:, None, :]))[:, 0].double()  # (M,)
    return {"eps": eps, "z": z, "log_px_given_z": lp, "mu": mu, "sigma": sigma}


def running_estimate(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Monte Carlo estimate with the first 1, 2, ..., M draws and its standard error:
    (M,) mean and (M,) sd / sqrt(M') (NaN at M' = 1, where no spread can be measured)."""
    v = values.double()
    k = torch.arange(1, len(v) + 1, dtype=torch.float64)
    mean = v.cumsum(0) / k
    sq = (v * v).cumsum(0)
    var = torch.where(k > 1, (sq - k * mean**2) / (k - 1).clamp_min(1), torch.full_like(k, float("nan")))
    return mean, var.clamp_min(0).sqrt() / k.sqrt()


def gradient_estimators(model: VAE, x, m: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """The gradient of E_q[log p(x|z)] with respect to q's (mu, sigma), for one x, two ways
    with the same M draws eps (eq 1.20 and the tutorial's comparison):

      score function   f(z) * grad log q(z)       : (f * eps / sigma,  f * (eps^2 - 1) / sigma)
      reparameterized  grad_(mu,sigma) f(mu + sigma * eps)   (the gradient passes through z)

    with f = log p(x|z). Both are unbiased; returns each one's per-draw values (M, 2d) as
    [d/dmu..., d/dsigma...], float64, so that their means and variances can be compared."""
    x = _as_batch(model, x)[:1]
    with torch.no_grad():
        q = model.encode(x)
        mu0, sigma0 = q.mu[0].double(), q.std.expand_as(q.mu)[0].double()
    gen = torch.Generator().manual_seed(seed)
    d = model.latent_dim
    eps = torch.randn((m, d), generator=gen, dtype=torch.float64)
    dtype = next(model.parameters()).dtype
    mu = mu0.to(dtype).expand(m, d).clone().requires_grad_(True)  # one copy per draw: per-draw gradients
    sigma = sigma0.to(dtype).expand(m, d).clone().requires_grad_(True)
    z = mu + sigma * eps.to(dtype)  # (M, d)
    with torch.enable_grad():
        f = model.log_px_given_z(x.reshape(1, -1), model.decode(z[:, None, :]))[:, 0]  # (M,)
        g_mu, g_sigma = torch.autograd.grad(f.sum(), (mu, sigma))
    reparam = torch.cat([g_mu, g_sigma], 1).double()
    fd = f.detach().double()[:, None]
    score = torch.cat([fd * eps / sigma0, fd * (eps.pow(2) - 1) / sigma0], 1)
    return {"score": score, "reparam": reparam, "mu": mu0, "sigma": sigma0}


def estimator_summary(per_draw: torch.Tensor) -> dict[str, list[float] | float]:
    """Per-draw gradient values (M, 2d): their mean, its standard error, and the per-draw
    variance summed over the 2d components (the trace of the estimator's covariance)."""
    m = len(per_draw)
    var = per_draw.var(0)
    return {"mean": per_draw.mean(0).tolist(), "se": (var / m).sqrt().tolist(), "total_variance": float(var.sum())}


# -- eval --json's extra keys ----------------------------------------------------------------------

QUADRATURE_MAX_SAMPLES = 500  # eval's quadrature: the whole test set up to this size, else this many rows


def eval_extras(model: VAE, x, quadrature: bool = True) -> dict[str, float]:
    """The test-set means that `eval --json` adds where they exist, nats per sample:
    log_px_quadrature (d <= 2), and for the linear architecture with a Gaussian likelihood
    elbo_exact, kl_to_posterior_exact and model_log_px_exact (their identity, eq 1.6, holds
    to rounding: elbo_exact + kl_to_posterior_exact = model_log_px_exact).

    The quadrature decodes a grid of thousands of z per sample, so it covers the whole test
    set only up to QUADRATURE_MAX_SAMPLES rows (digits: 359); a larger test set gets the mean
    over that many evenly spaced rows, with its standard error (log_px_quadrature_se; the
    number of rows used is log_px_quadrature_n either way). quadrature=False leaves it out."""
    out: dict[str, float] = {}
    if quadrature and model.latent_dim <= 2:
        n = len(x)
        rows = np.unique(np.linspace(0, n - 1, min(n, QUADRATURE_MAX_SAMPLES)).round().astype(np.int64))
        chunks = [torch.as_tensor(rows[i:i + 100]) for i in range(0, len(rows), 100)]
        values = torch.cat([log_px_quadrature(model, x.index_select(0, c)) for c in chunks])  # tensors or MappedRows
        out["log_px_quadrature"] = float(values.double().mean())
        out["log_px_quadrature_n"] = len(rows)
        if len(rows) < n:  # a sample of the test set: the mean's standard error
            out["log_px_quadrature_se"] = float(values.double().std()) / math.sqrt(len(rows))
    if has_closed_forms(model):
        sums: dict[str, float] = {}
        for start in range(0, len(x), 1000):  # x: a tensor or rows read from disk (trainer.mapped)
            cf = linear_closed_forms(model, x[start:start + 1000])
            for key, name in (("elbo", "elbo_exact"), ("kl_to_posterior", "kl_to_posterior_exact"),
                              ("model_log_px", "model_log_px_exact")):
                sums[name] = sums.get(name, 0.0) + float(cf[key].sum())
        out.update({key: v / len(x) for key, v in sums.items()})
    return out


@torch.no_grad()
def log_px_importance(model: VAE, x, k: int = 1000, seed: int = 0) -> dict[str, float]:
    """The importance-sampled log p(x) of one x with K draws from q(z|x) (vae-math.md) and its
    standard error by the delta method, sd(w / mean w) / sqrt(K) (w the importance weights):
    an approximate error, and an optimistic one when a few weights dominate."""
    x = _as_batch(model, x)[:1]
    q = model.encode(x)
    z = q.sample(k, torch.Generator().manual_seed(seed))  # (K, 1, d)
    log_w = (model.log_px_given_z(x.reshape(1, -1), model.decode(z)) + log_standard_normal(z)
             - q.log_prob(z))[:, 0].double()  # (K,)
    estimate = float(torch.logsumexp(log_w, 0)) - math.log(k)
    w = torch.exp(log_w - log_w.max())
    se = float((w / w.mean()).std()) / math.sqrt(k) if k > 1 else float("nan")
    return {"log_px": estimate, "se": se, "k": k}
