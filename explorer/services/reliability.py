"""When a figure is not to be trusted: the rule the app applies before it shows a number.

An estimate is shown as "unreliable: <why>" instead of as a number when
  - it is not finite (NaN, an infinity, or None where a figure was expected), or
  - the gap log p(x) - ELBO, which is KL(q(z|x) || p(z|x)) >= 0 (eq 1.6), is negative by
    more than 3 standard errors: both are Monte Carlo estimates, so a small negative gap is
    noise, a large one means the estimates failed (e.g. posterior variances collapsed to
    ~0, where importance sampling has no spread to work with), or
  - a posterior q(z|x) is narrower than float32 resolves at its mean (the sample's `mu` and
    `logvar`, or a split's count `posteriors_unresolved` of its `n` samples): its draws of z
    are rounding noise.
Without a standard error any negative gap is unreliable: nothing tells noise from failure.

Standard errors are read from the figures' own `<name>_se` keys (`gap_se`, or `log_px_se`
and `elbo_se` combined as independent). The rule itself is the trainer's
(`trainer.elbo.reliability`, also what `eval --json` reports); this module reads the app's
dicts of figures into it and checks the other terms (recon, KL) for finiteness.
"""

from __future__ import annotations

import math

from trainer.elbo import reliability as trainer_reliability

LABELS = {"elbo": "the ELBO", "recon": "the reconstruction term", "kl": "the KL", "log_px": "log p(x)",
          "gap": "the gap"}
PREFIX = "unreliable: "


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def gap_se(figures: dict) -> float | None:
    """The gap's standard error, nats: gap_se, or sqrt(log_px_se^2 + elbo_se^2); None if unknown."""
    if finite(figures.get("gap_se")):
        return float(figures["gap_se"])
    a, b = figures.get("log_px_se"), figures.get("elbo_se")
    if finite(a) and finite(b):
        return math.hypot(a, b)
    return None


def reliability(figures: dict, names: tuple[str, ...] = ("elbo", "recon", "kl", "log_px")) -> str | None:
    """None when the figures can be shown; else one line saying why not (without the
    "unreliable: " prefix, which the caller shows). `figures` holds per-sample means in nats
    (elbo, recon, kl, log_px, optionally gap, *_se, and q(z|x)'s mu and logvar); only the names
    present are checked."""
    for name in names:
        if name in figures and not finite(figures[name]):
            return f"{LABELS.get(name, name)} is not finite (the model's numbers overflowed: " \
                   "retrain with standardised data or a lower learning rate)"
    if not (finite(figures.get("log_px")) and finite(figures.get("elbo"))):
        return None
    why = trainer_reliability(float(figures["log_px"]), float(figures["elbo"]), gap_se(figures),
                              mu=figures.get("mu"), logvar=figures.get("logvar"),
                              unresolved=(int(figures.get("posteriors_unresolved") or 0), int(figures.get("n") or 0)))
    return why[len(PREFIX):] if why and why.startswith(PREFIX) else why
