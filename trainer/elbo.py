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
               eps: torch.Tensor | None = None, with_se: bool = False) -> dict[str, torch.Tensor]:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  (Theorem 1.2, eq 1.10 / 1.32).

    x: (N, *shape). Returns a dict of per-sample tensors:
      recon       (N,)   E_q[log p(x|z)] by Monte Carlo with M = mc_samples draws (eq 1.31)
      kl          (N,)   KL(q(z|x) || N(0, I)), closed form (eq 1.34)
      kl_per_dim  (N, d) the KL split over latent dimensions (0 = an inactive unit)
      elbo        (N,)   recon - kl
      recon_se    (N,)   with_se and M >= 2 only: the standard error of recon (and so of elbo) over
                         its M draws, sd / sqrt(M); the KL is exact (closed form)
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
    recon_draws = model.log_px_given_z(x.reshape(len(x), -1), out)  # (M, N)
    recon = recon_draws.mean(0)  # (N,)
    kl_per_dim = q.kl_per_dim()
    kl = kl_per_dim.sum(-1)
    terms = {"recon": recon, "kl": kl, "kl_per_dim": kl_per_dim, "elbo": recon - kl,
             "mu": q.mu, "logvar": q.logvar.expand_as(q.mu)}
    if with_se and len(recon_draws) > 1:
        terms["recon_se"] = recon_draws.std(0) / math.sqrt(len(recon_draws))
    return terms


@torch.no_grad()
def log_px(model: VAE, x: torch.Tensor, k: int = 1000, generator: torch.Generator | None = None,
           max_elements: int = 2**24) -> torch.Tensor:
    """Importance-sampled log p(x) with K samples from q(z|x), per sample (N,), nats:

        log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K

    A lower bound in expectation that tightens as K grows; K = 1 is the ELBO in expectation.
    The K samples are drawn in chunks so that a chunk's decoder output holds at most
    `max_elements` numbers, keeping memory bounded for any K. See log_px_and_se.
    """
    return log_px_and_se(model, x, k, generator, max_elements)[0]


@torch.no_grad()
def log_px_and_se(model: VAE, x: torch.Tensor, k: int = 1000, generator: torch.Generator | None = None,
                  max_elements: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """log_px's estimate and its Monte Carlo standard error, both (N,) float64, nats.

    log q(z_k|x) is taken from the noise itself, log N(eps_k; 0, I) - sum_j log sigma_j (the
    same number as log q at z_k = mu + sigma eps_k, but exact when sigma is tiny next to mu
    and z - mu is lost to rounding). The weights log w_k are added up in float64: with a
    narrow posterior they spread over hundreds of nats.

    The standard error is the delta method's, sd(w) / (sqrt(K) mean(w)), from the normalised
    weights a = softmax(log w): sd(w) / mean(w) = sqrt((K sum_k a_k^2 - 1) K / (K - 1));
    0 for K = 1 (one draw says nothing of its own noise). It is estimated from the K draws
    themselves, so it misses what they did not reach: where q(z|x) is far from the posterior
    (heavy-tailed weights) it is optimistic, and log p(x) is then biased low besides."""
    q = model.encode(x)
    x_flat = x.reshape(len(x), -1)
    chunk = max(1, min(k, max_elements // max(1, len(x) * model.data_dim)))
    log_det = 0.5 * q.logvar.expand_as(q.mu).sum(-1)  # (N,) sum_j log sigma_j
    log_w = []
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        eps = torch.randn((c, *q.mu.shape), generator=generator, device=q.mu.device, dtype=q.mu.dtype)
        z = q.mu + q.std * eps  # (c, N, d), the draws of q.sample(c, generator)
        out = model.decode(z)  # (c, N, D)
        log_q = log_standard_normal(eps) - log_det  # (c, N)
        log_w.append((model.log_px_given_z(x_flat, out) + log_standard_normal(z)).double() - log_q.double())
    log_w = torch.cat(log_w, 0)  # (K, N) float64
    estimate = torch.logsumexp(log_w, 0) - math.log(k)
    if k < 2:
        return estimate, torch.zeros_like(estimate)
    a = torch.softmax(log_w, 0)  # (K, N), the normalised weights
    rel_var = ((k * a.pow(2).sum(0) - 1) * k / (k - 1)).clamp_min(0)  # Var(w) / mean(w)^2
    return estimate, (rel_var / k).sqrt()


ACTIVE_UNIT_THRESHOLD = 0.01  # a unit is active when Cov_x(E_q[z_j]) exceeds this (Burda et al. 2016)
TERMS = ("elbo", "recon", "kl")  # the per-sample terms every evaluation adds up


@dataclass
class Evaluation:
    """What `evaluate` adds up over a data set: float64 sums over samples, nats.

    Sums rather than means, so that processes that each evaluate a share of the data can
    add theirs (`reduced`) before anything is divided; `means()`, `standard_errors()` and
    `active_dims()` then read them."""

    n: int  # samples in the whole data set (all shares together)
    keys: tuple[str, ...]  # names of `sums`: TERMS, then "log_px" and "gap" (log_px - elbo) and
    #                        "exact_log_px" when asked for
    sums: torch.Tensor  # (len(keys),) sum over samples of each per-sample term
    kl_per_dim: torch.Tensor  # (d,) sum over samples of the KL of each latent dimension
    mu_sum: torch.Tensor  # (d,) sum over samples of the posterior means E_q[z]
    mu_sq_sum: torch.Tensor  # (d,) sum of their squares: with mu_sum, the variance of E_q[z_j]
    per_sample: dict[str, torch.Tensor] | None = None  # (N, ...) CPU tensors, when asked for
    sq_sums: torch.Tensor | None = None  # (len(keys),) sum over samples of each term's square
    unresolved: torch.Tensor | None = None  # (1,) samples whose q(z|x) is narrower than float32
    #                                         resolves at its mean (unresolved_posterior)

    def means(self) -> dict[str, float]:
        """Per-sample means of the summed terms, nats."""
        return {k: float(v) / self.n for k, v in zip(self.keys, self.sums.tolist())}

    def standard_errors(self) -> dict[str, float]:
        """The standard error of each mean, as "<key>_se": sd / sqrt(n) with the unbiased sd
        of the per-sample values over the n samples (nats; NaN for n < 2). It holds the Monte
        Carlo noise of each sample's figure and the spread between samples; "gap_se" is the
        paired one, of log_px - elbo per sample (what a bound check needs)."""
        if self.sq_sums is None or self.n < 2:
            return {f"{k}_se": math.nan for k in self.keys}
        out = {}
        for key, s1, s2 in zip(self.keys, self.sums.tolist(), self.sq_sums.tolist()):
            var = max(s2 - s1 * s1 / self.n, 0.0) / (self.n - 1)
            out[f"{key}_se"] = math.sqrt(var / self.n) if math.isfinite(var) else math.nan
        return out

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
        parts = (self.sums, self.sq_sums, self.kl_per_dim, self.mu_sum, self.mu_sq_sum, self.unresolved)
        flat = all_reduce_sum(torch.cat(parts))
        sums, sq, kl, s1, s2, unresolved = flat.split([len(p) for p in parts])
        return Evaluation(self.n, self.keys, sums, kl, s1, s2, self.per_sample, sq, unresolved)

    @property
    def unresolved_posteriors(self) -> int:
        """How many samples' posteriors float32 cannot resolve (their figures are rounding noise)."""
        return int(self.unresolved.sum()) if self.unresolved is not None else 0


@torch.no_grad()
def evaluate(model: VAE, x, mc_samples: int = 1, seed: int = 0, batch_size: int = 4096, k: int = 0,
             exact_log_px: Callable[[torch.Tensor], torch.Tensor] | None = None,
             keep_per_sample: bool = False, share: tuple[int, int] = (0, 1)) -> Evaluation:
    """The ELBO terms of every sample of x (N, *shape), added up batch by batch.

    Each batch's noise eps (M, b, d) is drawn in order from one generator seeded with `seed`
    on the model's device, so the same model, data and seed give the same numbers. With k > 0
    each batch also gets the importance-sampled log p(x) (K = k, drawn after the batch's eps);
    `exact_log_px` (a data set's known density, run on the CPU batch) adds "exact_log_px".
    keep_per_sample keeps each sample's recon, kl, elbo, kl_per_dim, mu and logvar (and, with
    k, log_px, its Monte Carlo standard error log_px_se, and gap).
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
    keys = TERMS + (("log_px", "gap") if k else ()) + (("exact_log_px",) if exact_log_px is not None else ())
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    sq_sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    kl_per_dim, mu_sum, mu_sq_sum = (torch.zeros(d, dtype=torch.float64, device=device) for _ in range(3))
    unresolved = torch.zeros(1, dtype=torch.float64, device=device)
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
        values = [t[key].double() for key in TERMS]  # each (nb,)
        if k:
            t["log_px"], t["log_px_se"] = log_px_and_se(model, xd, k, gen)
            t["gap"] = t["log_px"] - t["elbo"].double()
            values += [t["log_px"], t["gap"]]
        if exact_log_px is not None:
            values.append(exact_log_px(xb).double().to(device))
        values = torch.stack(values)  # (len(keys), nb)
        sums += values.sum(1)
        sq_sums += values.pow(2).sum(1)
        mu = t["mu"].double()
        kl_per_dim += t["kl_per_dim"].double().sum(0)
        mu_sum += mu.sum(0)
        mu_sq_sum += mu.pow(2).sum(0)
        unresolved += unresolved_posterior(t["mu"], t["logvar"]).sum()
        if keep_per_sample:
            kept.append({key: t[key].cpu() for key in (*TERMS, "kl_per_dim", "mu", "logvar",
                                                         *(("log_px", "log_px_se", "gap") if k else ()))})
    model.train(was_training)
    per_sample = {key: torch.cat([b[key] for b in kept]) for key in kept[0]} if kept else None
    return Evaluation(len(x), keys, sums, kl_per_dim, mu_sum, mu_sq_sum, per_sample, sq_sums, unresolved)


# -- whether a figure can be shown as a number ----------------------------------------------

NOISE_SE = 3.0  # a bound broken by more than this many standard errors is not noise
POSTERIOR_RESOLUTION = 2.0**-20  # sigma below this fraction of |mu| (8 float32 steps): z is rounding noise


def _posterior_sigma(mu, logvar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, sigma, narrow) as float64 tensors shaped like mu: narrow where sigma <
    POSTERIOR_RESOLUTION * |mu|, so z = mu + sigma * eps rounds to mu in float32."""
    mu_t = torch.as_tensor(mu, dtype=torch.float64)
    std = torch.exp(0.5 * torch.as_tensor(logvar, dtype=torch.float64, device=mu_t.device)).expand_as(mu_t)
    return mu_t, std, std < POSTERIOR_RESOLUTION * mu_t.abs()


def unresolved_posterior(mu, logvar) -> torch.Tensor:
    """(N,) bool for mu, logvar (N, d) (or (d,): a 0-d answer): some dimension of q(z|x) is
    narrower than float32 resolves at its mean (_posterior_sigma), so every Monte Carlo
    figure of the sample is rounding noise."""
    return _posterior_sigma(mu, logvar)[2].any(-1)


def reliability(log_px: float | None, elbo: float | None, gap_se: float | None = None, *,
                log_px_se: float = 0.0, elbo_se: float = 0.0, mu=None, logvar=None,
                unresolved: tuple[int, int] = (0, 0)) -> str | None:
    """None when a VAE's figures can be shown as numbers, else "unreliable: <why>" (one line).

    For one sample's figures or for means over a split, nats: `log_px` (importance-sampled
    log p(x); None if not estimated) and `elbo`. The gap log_px - elbo is never negative for
    the true values (Theorem 1.1), so an estimate below -NOISE_SE standard errors is
    impossible: the noise is `gap_se` when given (paired, e.g. eval --json's gap_se), else
    sqrt(log_px_se^2 + elbo_se^2) (0 when neither is known: one draw of z, so any negative
    gap is flagged). `mu`, `logvar` (array-likes (d,) or (N, d), optional): q(z|x); a
    posterior sigma below POSTERIOR_RESOLUTION * |mu| leaves its samples, and so every
    Monte Carlo figure, to float32 rounding; for means over a split, `unresolved` = (count, n)
    says how many of its n samples have such a posterior (Evaluation.unresolved_posteriors).
    Checked in this order; the first problem found is the reason given."""
    for name, value in (("log p(x)", log_px), ("the ELBO", elbo)):
        if value is not None and not math.isfinite(value):
            kind = "NaN" if math.isnan(value) else "infinite"
            return (f"unreliable: {name} is {kind} (the model's numbers overflowed): train on "
                    "standardised data (fit --standardize) or with a lower learning rate")
    if mu is not None and logvar is not None:
        mu_t, std, narrow = _posterior_sigma(mu, logvar)
        if bool(narrow.any()):
            i = int(torch.nonzero(narrow.flatten())[0])
            return (f"unreliable: the posterior's standard deviation ({float(std.flatten()[i]):.1e}) is below "
                    f"float32's resolution at its mean ({float(mu_t.flatten()[i]):.3g}), so its samples are "
                    "rounding noise: train on standardised data (fit --standardize)")
    count, n = unresolved
    if count:
        return (f"unreliable: {count} of {n} samples have a posterior whose standard deviation is below "
                "float32's resolution at its mean, so their samples of z are rounding noise: train on "
                "standardised data (fit --standardize)")
    if log_px is not None and elbo is not None:
        gap = log_px - elbo
        se = gap_se if gap_se is not None and math.isfinite(gap_se) else math.hypot(log_px_se, elbo_se)
        if gap < -NOISE_SE * se:
            noise = (f"more than {NOISE_SE:g} standard errors ({se:.2g})" if se > 0
                     else "with one draw of z, so no noise estimate")
            return (f"unreliable: log p(x) is {-gap:.3g} nats below the ELBO, {noise}; the true "
                    "log p(x) is never below it: use more draws (--k, --mc-samples)")
    return None
