"""The ELBO's terms per sample (Sec. 1.2) and the importance-sampled log p(x).

Every function returns per-sample tensors in nats with the sign of a log-likelihood
(higher is better); callers reduce (mean over a batch, sum over a data set).
"""

from __future__ import annotations

import math

import torch

from .model import VAE, log_standard_normal


def elbo_terms(model: VAE, x: torch.Tensor, mc_samples: int = 1,
               generator: torch.Generator | None = None,
               eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  (Theorem 1.2, eq 1.10 / 1.32).

    x: (N, *shape). Returns a dict of per-sample tensors:
      recon       (N,)   E_q[log p(x|z)] by Monte Carlo with M = mc_samples draws (eq 1.31)
      kl          (N,)   KL(q(z|x) || N(0, I)), closed form (eq 1.34)
      kl_per_dim  (N, d) the KL split over latent dimensions (0 = an inactive unit)
      elbo        (N,)   recon - kl
    plus `mu` and `logvar` (N, d) of q(z|x) for callers that want them.
    eps (M, N, d), optional: the standard normal noise to use instead of drawing it (several
    processes draw one global batch's noise alike and each takes its rows: trainer.distributed).
    """
    q = model.encode(x)
    if eps is None:
        z = model.reparameterize(q, mc_samples, generator)  # (M, N, d)
    else:
        z = q.mu + q.std * eps  # (M, N, d), as DiagonalGaussian.sample with this eps
    out = model.decode(z)  # (M, N, D)
    recon = model.log_px_given_z(x.reshape(len(x), -1), out).mean(0)  # (N,)
    kl_per_dim = q.kl_per_dim()
    kl = kl_per_dim.sum(-1)
    return {"recon": recon, "kl": kl, "kl_per_dim": kl_per_dim, "elbo": recon - kl,
            "mu": q.mu, "logvar": q.logvar.expand_as(q.mu)}


@torch.no_grad()
def log_px(model: VAE, x: torch.Tensor, k: int = 1000, generator: torch.Generator | None = None,
           max_elements: int = 2**24) -> torch.Tensor:
    """Importance-sampled log p(x) with K samples from q(z|x), per sample (N,), nats:

        log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K

    A lower bound in expectation that tightens as K grows; K = 1 is the ELBO in expectation.
    The K samples are drawn in chunks so that a chunk's decoder output holds at most
    `max_elements` numbers, keeping memory bounded for any K.
    """
    q = model.encode(x)
    x_flat = x.reshape(len(x), -1)
    chunk = max(1, min(k, max_elements // max(1, len(x) * model.data_dim)))
    log_w = []
    for start in range(0, k, chunk):
        z = q.sample(min(chunk, k - start), generator)  # (c, N, d)
        out = model.decode(z)  # (c, N, D)
        log_w.append(model.log_px_given_z(x_flat, out) + log_standard_normal(z) - q.log_prob(z))
    return torch.logsumexp(torch.cat(log_w, 0), 0) - math.log(k)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across the data: Cov_x(E_q[z_j]) > 0.01
    (Burda et al. 2016). mu: (N, d) posterior means."""
    if len(mu) < 2:
        return 0
    return int((mu.var(0) > threshold).sum())
