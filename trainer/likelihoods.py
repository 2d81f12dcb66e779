"""The decoder's likelihood p(x|z): one class each, and the registry that names them.

The decoder network maps z to one output per value of x, `out` (..., D). What `out` means
is the likelihood's business, and nothing outside this module asks which likelihood a
model has: the model, the checks on the data, the CLI choices and the Train form read `LIKELIHOODS`;
config validation reads its names, `config.LIKELIHOODS` (no torch), checked against it here.

    log_prob(x, out, log_sigma_dec)  log p(x|z) per sample (..., N), nats, normalising
                                     constant included, so that log p(x) is a density's log
    mean(out)                        E[x|z], what the decoder "shows" (..., D)
    output_bias_start(mean_x)        the output bias that makes mean(out) the data's mean
    check_data(data)                 refuses a data set outside the likelihood's support
    has_sigma_dec                    whether sigma_dec (a noise scale) is a parameter of it
    real_valued                      whether it is a density for any real x (standardisable)

Adding a likelihood: write one subclass here, add it to LIKELIHOODS, and test it against
torch.distributions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import config
from .errors import TrainerError

LOG_2PI = math.log(2 * math.pi)


class Likelihood:
    name: str = ""  # the registry key: the CLI's --likelihood choice and config.json's value
    help: str = ""  # one line for --help and the Train form
    has_sigma_dec: bool = False  # True: N(f(z), sigma_dec^2 I); sigma_dec is learned or fixed
    real_valued: bool = False  # True: a density for any real x (so x may be standardised: trainer.preprocess)

    def log_prob(self, x_flat: torch.Tensor, out: torch.Tensor, log_sigma_dec: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for x (N, D) and decoder output (..., N, D): (..., N), nats."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z] for decoder output (..., D): (..., D)."""
        raise NotImplementedError

    def output_bias_start(self, mean_x: torch.Tensor) -> torch.Tensor:
        """The decoder's output bias (D,) at which mean() is the data's mean `mean_x` (D,)."""
        raise NotImplementedError

    def check_data(self, data) -> None:
        """Raise TrainerError when the values of `data` (a trainer.data.Dataset: its name and
        value_range()) lie outside this likelihood's support. Every real number by default."""


class Gaussian(Likelihood):
    """N(x; f(z), sigma_dec^2 I) (eq 1.29); `out` is the mean f(z)."""

    name = "gaussian"
    help = "N(f(z), sigma_dec^2 I) (eq 1.29), for any real-valued data"
    has_sigma_dec = True
    real_valued = True

    def log_prob(self, x_flat, out, log_sigma_dec):
        # eq 1.33: -||x - f(z)||^2 / (2 sigma_dec^2) - (D/2) log(2 pi sigma_dec^2)
        sq = (x_flat - out).pow(2).sum(-1)
        log_var = 2 * log_sigma_dec
        return -0.5 * sq * torch.exp(-log_var) - 0.5 * out.shape[-1] * (LOG_2PI + log_var)

    def mean(self, out):
        return out

    def output_bias_start(self, mean_x):
        return mean_x


class _InUnitInterval(Likelihood):
    """A likelihood for values in [0, 1] whose decoder output is a logit per value."""

    def check_data(self, data):
        lo, hi = data.value_range()  # both splits: held-out samples must be in the support too
        if lo < 0 or hi > 1:
            raise TrainerError(f"{data.name}: {self.name} needs values in [0, 1] but the data spans "
                               f"[{lo:.3g}, {hi:.3g}]: use --likelihood gaussian")


class Bernoulli(_InUnitInterval):
    """prod_i p_i^x_i (1 - p_i)^(1 - x_i), p = sigmoid(out). A probability for binary x; for
    graded values in [0, 1] it is not normalised (see ContinuousBernoulli)."""

    name = "bernoulli"
    help = "Bernoulli with p = sigmoid(logits), for data in [0, 1] (a density only for binary x)"

    def log_prob(self, x_flat, out, log_sigma_dec):
        return -F.binary_cross_entropy_with_logits(out, x_flat.expand_as(out), reduction="none").sum(-1)

    def mean(self, out):
        return torch.sigmoid(out)

    def output_bias_start(self, mean_x):
        p = mean_x.clamp(1e-3, 1 - 1e-3)
        return torch.log(p) - torch.log1p(-p)


class ContinuousBernoulli(_InUnitInterval):
    """The continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019): the Bernoulli's
    p^x (1 - p)^(1 - x) made a density on [0, 1] by its normaliser C(p), p = sigmoid(out):

        log p(x|z) = sum_i [x_i log p_i + (1 - x_i) log(1 - p_i) + log C(p_i)]
        C(p) = 2 artanh(1 - 2p) / (1 - 2p),  = 2 at p = 1/2

    In the logit eta = log(p / (1 - p)): 1 - 2p = -tanh(eta / 2), so C = eta / tanh(eta / 2),
    and the mean is 1 / (1 - exp(-eta)) - 1 / eta. Both have a removable singularity at
    eta = 0 (p = 1/2), where they are computed from their Taylor series."""

    name = "continuous-bernoulli"
    help = "continuous Bernoulli, the normalised density for values in [0, 1] (Loaiza-Ganem & Cunningham 2019)"
    TAYLOR_BELOW = 0.1  # |eta| under which the series are used (their first term left out is below 1e-12 there)

    def log_normaliser(self, eta: torch.Tensor) -> torch.Tensor:
        """log C for logits eta, elementwise."""
        a = eta.abs()
        small = a < self.TAYLOR_BELOW
        safe = torch.where(small, torch.ones_like(a), a)
        # log(a / tanh(a/2)), with log tanh(a/2) = log(1 - e^-a) - log(1 + e^-a)
        exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + F.softplus(-safe)
        series = math.log(2.0) + eta.pow(2) / 12 - 7 * eta.pow(4) / 1440 + 31 * eta.pow(6) / 90720
        return torch.where(small, series, exact)

    def log_prob(self, x_flat, out, log_sigma_dec):
        bernoulli = -F.binary_cross_entropy_with_logits(out, x_flat.expand_as(out), reduction="none")
        return (bernoulli + self.log_normaliser(out)).sum(-1)

    def mean(self, out):
        small = out.abs() < self.TAYLOR_BELOW
        safe = torch.where(small, torch.ones_like(out), out)
        exact = 1 / (-torch.expm1(-safe)) - 1 / safe
        series = 0.5 + out / 12 - out.pow(3) / 720 + out.pow(5) / 30240
        return torch.where(small, series, exact)

    def output_bias_start(self, mean_x):
        # mean() rises monotonically from 0 to 1 in eta: bisect for the logit of each mean
        target = mean_x.double().clamp(1e-3, 1 - 1e-3)
        lo, hi = torch.full_like(target, -1000.0), torch.full_like(target, 1000.0)
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.mean(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(mean_x.dtype)


LIKELIHOODS: dict[str, Likelihood] = {lik.name: lik for lik in (Gaussian(), Bernoulli(), ContinuousBernoulli())}
if tuple(LIKELIHOODS) != config.LIKELIHOODS:  # the names config validation accepts, torch-free
    raise ImportError(f"trainer.config.LIKELIHOODS must list {tuple(LIKELIHOODS)}")


def get(name: str) -> Likelihood:
    """The likelihood called `name`; TrainerError listing the choices for any other."""
    if name not in LIKELIHOODS:
        raise TrainerError(f"unknown likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]
