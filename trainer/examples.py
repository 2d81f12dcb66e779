"""Closed forms of the tutorial's worked examples (vae-math.md), used as references.

All quantities are per sample, in nats, with the sign of a log-likelihood.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .likelihoods import LOG_2PI


def gmm_log_px(x: torch.Tensor, means: torch.Tensor, sigma: float, weights: torch.Tensor) -> torch.Tensor:
    """Example 1.2: log sum_k pi_k N(x | mu_k, sigma^2 I). x: (N, D), means: (K, D) -> (N,)."""
    x, means, weights = x.double(), means.double(), weights.double()
    D = x.shape[1]
    sq = (x[:, None, :] - means[None]).pow(2).sum(-1)  # (N, K)
    log_comp = -0.5 * sq / sigma**2 - 0.5 * D * (LOG_2PI + 2 * math.log(sigma))
    return torch.logsumexp(log_comp + torch.log(weights)[None], dim=1).float()


def linear_gaussian_log_px(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """Examples 1.3-1.6: data x ~ N(mu, sigma^2 I); exact log p(x) per sample, (N,)."""
    x, mu = x.double(), mu.double()
    d = x.shape[1]
    return (-0.5 * (x - mu).pow(2).sum(1) / sigma**2 - 0.5 * d * (LOG_2PI + 2 * math.log(sigma))).float()


def linear_gaussian_entropy(d: int, sigma: float) -> float:
    """The data's entropy per sample, -(d/2) log(2 pi e sigma^2): the mean exact log p(x) is -this."""
    return 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)


def linear_gaussian_elbo(x: np.ndarray | torch.Tensor, mu, sigma: float, t: float, s: float) -> torch.Tensor:
    """Closed-form ELBO(t, s) per sample for the hand-set linear VAE of vae-math.md:
    encoder mean (x - mu)/sigma with variance t^2 I, decoder mean sigma z + mu with variance s^2 I.

        ELBO(t, s) = -(d/2) log(2 pi s^2) - sigma^2 t^2 d / (2 s^2)
                     - 1/2 (t^2 d - d + ||(x - mu)/sigma||^2 - 2 d log t)
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    d = x.shape[1]
    u2 = ((x - mu) / sigma).pow(2).sum(1)
    recon = -0.5 * d * math.log(2 * math.pi * s**2) - sigma**2 * t**2 * d / (2 * s**2)
    kl = 0.5 * (t**2 * d - d + u2 - 2 * d * math.log(t))
    return recon - kl
