"""The ELBO's terms per sample (Sec. 1.2) and the importance-sampled log p(x).

Every function returns per-sample tensors in nats with the sign of a log-likelihood
(higher is better); callers reduce (mean over a batch, sum over a data set). `evaluate`
is the one loop over a data set (training's test pass, the multi-process test pass, `eval`
and the app all use it): sums, per-dimension KL, posterior means and the active units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


ACTIVE_UNIT_THRESHOLD = 0.01  # a unit is active when Cov_x(E_q[z_j]) exceeds this (Burda et al. 2016)
TERMS = ("elbo", "recon", "kl")  # the per-sample terms every evaluation adds up


@dataclass
class Evaluation:
    """What `evaluate` adds up over a data set: float64 sums over samples, nats.

    Sums rather than means, so that processes that each evaluate a share of the data can
    add theirs (`reduced`) before anything is divided; `means()` and `active_dims()` then
    read them."""

    n: int  # samples in the whole data set (all shares together)
    keys: tuple[str, ...]  # names of `sums`: TERMS, then "log_px" and "exact_log_px" when asked for
    sums: torch.Tensor  # (len(keys),) sum over samples of each per-sample term
    kl_per_dim: torch.Tensor  # (d,) sum over samples of the KL of each latent dimension
    mu_sum: torch.Tensor  # (d,) sum over samples of the posterior means E_q[z]
    mu_sq_sum: torch.Tensor  # (d,) sum of their squares: with mu_sum, the variance of E_q[z_j]
    per_sample: dict[str, torch.Tensor] | None = None  # (N, ...) CPU tensors, when asked for

    def means(self) -> dict[str, float]:
        """Per-sample means of the summed terms, nats."""
        return {k: float(v) / self.n for k, v in zip(self.keys, self.sums.tolist())}

    def kl_per_dim_mean(self) -> list[float]:
        return (self.kl_per_dim / self.n).tolist()

    def active_dims(self) -> torch.Tensor:
        """(d,) bool: the latent dimensions whose posterior mean varies over the data,
        Cov_x(E_q[z_j]) > ACTIVE_UNIT_THRESHOLD (unbiased variance, Burda et al. 2016)."""
        if self.n < 2:
            return torch.zeros(len(self.mu_sum), dtype=torch.bool)
        var = (self.mu_sq_sum - self.mu_sum.pow(2) / self.n) / (self.n - 1)
        return (var > ACTIVE_UNIT_THRESHOLD).cpu()

    @property
    def active_units(self) -> int:
        return int(self.active_dims().sum())

    def reduced(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> "Evaluation":
        """The evaluation of all shares: every sum passed through `all_reduce_sum` at once
        (trainer.distributed sums a tensor over the processes)."""
        parts = (self.sums, self.kl_per_dim, self.mu_sum, self.mu_sq_sum)
        flat = all_reduce_sum(torch.cat(parts))
        sums, kl, s1, s2 = flat.split([len(p) for p in parts])
        return Evaluation(self.n, self.keys, sums, kl, s1, s2, self.per_sample)


@torch.no_grad()
def evaluate(model: VAE, x, mc_samples: int = 1, seed: int = 0, batch_size: int = 4096, k: int = 0,
             exact_log_px: Callable[[torch.Tensor], torch.Tensor] | None = None,
             keep_per_sample: bool = False, share: tuple[int, int] = (0, 1)) -> Evaluation:
    """The ELBO terms of every sample of x (N, *shape), added up batch by batch.

    Each batch's noise eps (M, b, d) is drawn in order from one generator seeded with `seed`
    on the model's device, so the same model, data and seed give the same numbers. With k > 0
    each batch also gets the importance-sampled log p(x) (K = k, drawn after the batch's eps);
    `exact_log_px` (a data set's known density, run on the CPU batch) adds "exact_log_px".
    keep_per_sample keeps each sample's recon, kl, elbo, kl_per_dim, mu and logvar.
    share = (rank, processes): this process evaluates batches rank, rank + processes, ... but
    draws every batch's eps, so that each batch sees the noise it sees in one process; its
    sums are then a share, to be added up with Evaluation.reduced (k must be 0 then).
    x may be a tensor on any device or trainer.mapped.MappedRows (read a batch at a time)."""
    rank, processes = share
    if processes > 1 and (k or keep_per_sample):
        raise ValueError("a shared evaluation has no log p(x) or per-sample terms")
    p = next(model.parameters())
    device, d = p.device, model.latent_dim
    gen = torch.Generator(device=device).manual_seed(seed)
    keys = TERMS + (("log_px",) if k else ()) + (("exact_log_px",) if exact_log_px is not None else ())
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    kl_per_dim, mu_sum, mu_sq_sum = (torch.zeros(d, dtype=torch.float64, device=device) for _ in range(3))
    kept: list[dict[str, torch.Tensor]] = []
    was_training = model.training
    model.eval()
    for j, start in enumerate(range(0, len(x), batch_size)):
        nb = min(batch_size, len(x) - start)
        eps = torch.randn((mc_samples, nb, d), generator=gen, device=device, dtype=p.dtype)
        if j % processes != rank:
            continue
        xb = x[start:start + nb]
        xd = xb.to(device)
        t = elbo_terms(model, xd, eps=eps)
        batch = [t[key].double().sum() for key in TERMS]
        if k:
            batch.append(log_px(model, xd, k, gen).double().sum())
        if exact_log_px is not None:
            batch.append(exact_log_px(xb).double().sum().to(device))
        sums += torch.stack(batch)
        mu = t["mu"].double()
        kl_per_dim += t["kl_per_dim"].double().sum(0)
        mu_sum += mu.sum(0)
        mu_sq_sum += mu.pow(2).sum(0)
        if keep_per_sample:
            kept.append({key: t[key].cpu() for key in (*TERMS, "kl_per_dim", "mu", "logvar")})
    model.train(was_training)
    per_sample = {key: torch.cat([b[key] for b in kept]) for key in kept[0]} if kept else None
    return Evaluation(len(x), keys, sums, kl_per_dim, mu_sum, mu_sq_sum, per_sample)
