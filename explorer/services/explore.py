"""What the views show, computed from a trained run: the encoded test set, the latent map's
colours, projections to the plane, paths between two codes, grids, traversals and one
sample's ELBO breakdown.

Each is a plain function of a `trainer.Run` (or of arrays) that tests call directly; no
streamlit here. explorer/services/cached.py memoises them for the views, one cache entry
per checkpoint; explorer/services/pictures.py turns decoded means into pictures. All ELBO
numbers are per sample, in nats, with the sign of a log-likelihood (higher is better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer import Run
from trainer.elbo import evaluate
from trainer.likelihoods import LOG_2PI
from trainer.model import log_standard_normal

T_STEPS = 101  # interpolation frames: t = 0, 0.01, ..., 1 (the slider's steps)
MAX_DISCRETE = 20  # a label column with at most this many integer values is a category
EVAL_K = 100  # importance samples per test sample for the Runs table's log p(x)


@dataclass
class Encoded:
    """The test split, encoded. N test samples, d latent dimensions."""

    x: np.ndarray  # (N, *shape) the inputs
    mu: np.ndarray  # (N, d) posterior means, the points of the latent map
    logvar: np.ndarray  # (N, d)
    recon: np.ndarray  # (N,) E_q[log p(x|z)], one Monte Carlo sample (M = 1)
    kl: np.ndarray  # (N,) KL(q(z|x) || p(z))
    elbo: np.ndarray  # (N,) recon - kl
    kl_per_dim: np.ndarray  # (N, d)
    labels: np.ndarray | None  # (N, F) labels or known factors
    label_names: list[str]  # F names
    is_image: bool
    active_dims: np.ndarray  # (d,) bool: the trainer's active units (Cov_x(E_q[z_j]) > 0.01)
    feature_names: list[str] = field(default_factory=list)  # D names of x's values (non-image data), else []
    class_names: list[str] = field(default_factory=list)  # the first label's category names (y == i), else []

    @property
    def n(self) -> int:
        return len(self.mu)

    @property
    def latent_dim(self) -> int:
        return self.mu.shape[1]


def encode_test(run: Run, batch_size: int = 1000) -> Encoded:
    """Encode the run's test split and compute each sample's ELBO terms (M = 1, fixed eps
    from seed 0), through the trainer's one evaluation loop."""
    data = run.load_data()
    ev = evaluate(run.model, data.x_test, mc_samples=1, seed=0, batch_size=batch_size, keep_per_sample=True)
    t = {k: v.numpy() for k, v in ev.per_sample.items()}
    return Encoded(data.x_test.numpy(), t["mu"], t["logvar"], t["recon"], t["kl"], t["elbo"], t["kl_per_dim"],
                   data.y_test, list(data.label_names), data.is_image, ev.active_dims().numpy(),
                   list(data.feature_names), list(data.class_names))


def feature_names(enc: Encoded) -> list[str]:
    """The names of x's D values: the file's column names where the data set keeps them
    (trainer.data.Dataset.feature_names), else x1..xD."""
    d = int(np.prod(enc.x.shape[1:]))
    return list(enc.feature_names) if len(enc.feature_names) == d else [f"x{j + 1}" for j in range(d)]


# A bar strip draws every feature on one vertical scale unless their spans differ by more than
# this factor: a table in its own units (wine's proline spans ~1,400, its hue ~1.2) would show
# one tall bar and flat lines. Standardised tables and generated vectors stay on one scale.
SHARED_SCALE_MAX_SPREAD = 10.0


def bar_scales(values: np.ndarray, include_zero: bool = False) -> dict:
    """The vertical scale of a bar strip of values (N, B), one bar per feature: "range", [lo, hi]
    over every value (holding 0 too with include_zero: bars drawn from a zero line), and
    "ranges", each feature's own [lo, hi], when the features' spans differ by more than
    SHARED_SCALE_MAX_SPREAD times (else None); a bar then rises from 0 where its range holds
    0, else from its range's end nearer 0. An empty span becomes [lo, lo + 1]."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    lo, hi = v.min(0), v.max(0)  # (B,)

    def pair(a: float, b: float) -> list[float]:
        return [float(a), float(b) if b > a else float(a) + 1.0]

    spans = (hi - lo)[hi > lo]
    apart = len(spans) > 0 and spans.max() > SHARED_SCALE_MAX_SPREAD * spans.min()
    shared = pair(min(lo.min(), 0.0), max(hi.max(), 0.0)) if include_zero else pair(lo.min(), hi.max())
    return {"range": shared, "ranges": [pair(a, b) for a, b in zip(lo, hi)] if apart else None}


def is_discrete(values: np.ndarray) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(np.all(v == np.round(v)) and len(np.unique(v)) <= MAX_DISCRETE)


# -- colouring the latent map ----------------------------------------------------------------

def color_options(enc: Encoded) -> list[str]:
    """What the latent map can be coloured by: each label column, the per-sample terms, and
    each latent coordinate."""
    opts = list(enc.label_names) if enc.labels is not None else []
    opts += ["ELBO", "recon", "KL"]
    opts += [f"z{j + 1}" for j in range(enc.latent_dim)]
    return opts + ["none"]


def color_values(enc: Encoded, option: str) -> tuple[np.ndarray | None, bool]:
    """(values (N,), discrete) for a color option of color_options()."""
    if option == "none":
        return None, False
    if enc.labels is not None and option in enc.label_names:
        v = enc.labels[:, enc.label_names.index(option)]
        named = bool(enc.class_names) and option == enc.label_names[0]  # a label of names is a category
        return v, named or is_discrete(v)
    terms = {"ELBO": enc.elbo, "recon": enc.recon, "KL": enc.kl}
    if option in terms:
        return terms[option], False
    if option.startswith("z") and option[1:].isdigit() and 1 <= int(option[1:]) <= enc.latent_dim:
        return enc.mu[:, int(option[1:]) - 1], False
    raise ValueError(f"unknown colour option {option!r}")


def category_names(option: str, enc: Encoded | None = None,
                   class_names: list[str] | None = None, label_names: list[str] | None = None
                   ) -> dict[float, str] | None:
    """Readable names of a categorical label's values {value: name}: the file's own for its
    first label (y == i is class_names[i]: a CSV column of names, an .npz's class_names, the
    subfolders of an image folder), from `enc` or given as class_names and label_names; else
    the shapes data set's shape factor; else None."""
    if enc is not None:
        class_names, label_names = enc.class_names, enc.label_names
    if class_names and label_names and option == label_names[0]:
        return {float(i): str(n) for i, n in enumerate(class_names)}
    if option == "shape":
        from trainer.data import SHAPE_NAMES

        return {float(i): n for i, n in enumerate(SHAPE_NAMES)}
    return None


# -- projections to the plane ----------------------------------------------------------------

PROJECTIONS = ("PCA", "t-SNE", "UMAP")


def umap_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def available_projections() -> list[str]:
    return [p for p in PROJECTIONS if p != "UMAP" or umap_installed()]


@dataclass
class Projection:
    """Codes (N, d) mapped to the plane (N, 2), and a way to map new codes the same way."""

    method: str
    xy: np.ndarray  # (N, 2)
    axis_titles: tuple[str, str]
    codes: np.ndarray  # (N, d) the codes that were projected
    pca_mean: np.ndarray | None = None  # PCA: x -> (x - mean) @ components.T
    pca_components: np.ndarray | None = None  # (2, d)

    def transform(self, z: np.ndarray) -> np.ndarray:
        """New codes (M, d) -> (M, 2). Exact for the identity and PCA; for t-SNE and UMAP,
        which have no map for new points, the inverse-distance mean of the 5 nearest codes."""
        z = np.asarray(z, dtype=np.float64).reshape(-1, self.codes.shape[1])
        if self.method == "identity":
            return _pad2(z)
        if self.method == "PCA":
            return (z - self.pca_mean) @ self.pca_components.T
        d2 = ((z[:, None, :] - self.codes[None, :, :]) ** 2).sum(-1)  # (M, N)
        nearest = np.argsort(d2, axis=1)[:, :5]
        w = 1.0 / (np.sqrt(np.take_along_axis(d2, nearest, 1)) + 1e-9)
        return (w[:, :, None] * self.xy[nearest]).sum(1) / w.sum(1, keepdims=True)


def _pad2(z: np.ndarray) -> np.ndarray:
    return z if z.shape[1] >= 2 else np.concatenate([z, np.zeros((len(z), 1))], 1)


def project(mu: np.ndarray, method: str = "PCA", seed: int = 0) -> Projection:
    """Latent codes (N, d) to the plane. d <= 2 is drawn as is; d > 2 by PCA (instant), t-SNE
    (scikit-learn) or UMAP (where umap-learn is installed)."""
    mu = np.asarray(mu, dtype=np.float64)
    d = mu.shape[1]
    if d <= 2:
        return Projection("identity", _pad2(mu), ("z1", "z2" if d == 2 else "(none: d = 1)"), mu)
    if method == "PCA":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(mu)
        ev = pca.explained_variance_ratio_ * 100
        return Projection("PCA", pca.transform(mu), (f"PC 1 ({ev[0]:.0f}% of variance)",
                                                     f"PC 2 ({ev[1]:.0f}% of variance)"),
                          mu, pca.mean_, pca.components_)
    if method == "t-SNE":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(mu) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500,
                  random_state=seed).fit_transform(mu)
        return Projection("t-SNE", xy, ("t-SNE 1", "t-SNE 2"), mu)
    if method == "UMAP":
        import umap  # optional dependency

        # one job: a seeded UMAP is serial anyway (it says so in a warning if asked for more)
        xy = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(mu)
        return Projection("UMAP", np.asarray(xy), ("UMAP 1", "UMAP 2"), mu)
    raise ValueError(f"unknown projection {method!r}")


# -- paths between two codes ---------------------------------------------------------------

def lerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Straight line: (1 - t) a + t b. t scalar or (T,) -> (d,) or (T, d)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return (1 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Spherical interpolation: along the great circle between the directions of a and b,
    with the norm interpolated linearly, so every point's norm lies between |a| and |b|.
    Under N(0, I) most mass sits near the sphere of radius sqrt(d) (the typical set); the
    straight line cuts inside it, slerp keeps to it. Falls back to lerp for parallel or zero
    endpoints, and for opposite ones in d = 1 (no circle joins them); opposite endpoints in
    d >= 2 have no one great circle: the path goes a quarter circle to a fixed perpendicular
    direction, then a quarter circle on to b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return lerp(a, b, t[..., 0])
    ua, ub = a / na, b / nb
    omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
    if omega < 1e-6 or (math.pi - omega < 1e-6 and a.size == 1):
        return lerp(a, b, t[..., 0])
    if math.pi - omega < 1e-6:  # (nearly) opposite: through m, perpendicular to a, at the mean norm
        e = np.zeros_like(ua)
        e[np.argmin(np.abs(ua))] = 1.0  # the axis least aligned with a
        perp = e - (e @ ua) * ua
        m = perp / np.linalg.norm(perp) * (0.5 * (na + nb))
        first, second = slerp(a, m, np.minimum(2 * t[..., 0], 1.0)), slerp(m, b, np.maximum(2 * t[..., 0] - 1, 0.0))
        return np.where(t <= 0.5, first, second)
    s = math.sin(omega)
    direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / s  # unit vectors
    return direction * ((1 - t) * na + t * nb)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def typical_log_density(d: int, k: float = 2.0) -> tuple[float, float]:
    """Where log N(z; 0, I) of a prior sample lies: ||z||^2 ~ chi^2_d (mean d, variance 2d),
    so log p(z) = -||z||^2 / 2 - (d/2) log 2 pi has mean -(d/2)(1 + log 2 pi) and sd sqrt(d/2).
    Returns mean -/+ k sd."""
    mean, sd = -0.5 * d * (1 + LOG_2PI), math.sqrt(d / 2)
    return mean - k * sd, mean + k * sd


def prior_log_density(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I) per code, nats: (..., d) -> (...); the trainer's log_standard_normal,
    in float64."""
    return log_standard_normal(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()


@dataclass
class PathFrames:
    """A path from code A to code B, decoded at T_STEPS evenly spaced t."""

    t: np.ndarray  # (T,)
    z: np.ndarray  # (T, d)
    images: np.ndarray  # (T, *shape) decoded means of p(x|z)
    log_prior: np.ndarray  # (T,) log N(z; 0, I), nats
    decoded_elbo: np.ndarray  # (T,) ELBO of the decoded sample under the model (M = 16), nats per sample


def path_frames(run: Run, a: np.ndarray, b: np.ndarray, method: str = "lerp", steps: int = T_STEPS) -> PathFrames:
    t = np.linspace(0.0, 1.0, steps)
    z = INTERPOLATIONS[method](a, b, t)
    images = run.decode(z)
    terms = run.elbo_terms(images, mc_samples=16, seed=0)
    return PathFrames(t, z, images.numpy(), prior_log_density(z), terms["elbo"].numpy())


# -- grids and samples -----------------------------------------------------------------------

def latent_grid(n: int, span: float) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid of 2-D codes over [-span, span]^2: axis values (n,), codes (n*n, 2) with
    row 0 at the top (z2 = +span), as an image is read."""
    axis = np.linspace(-span, span, n)
    z1, z2 = np.meshgrid(axis, axis[::-1])
    return axis, np.stack([z1.ravel(), z2.ravel()], 1)


def manifold(run: Run, n: int = 15, span: float = 3.0) -> np.ndarray:
    """Decoded means on an n x n grid of 2-D codes: (n*n, *shape), row-major from the top-left."""
    _, z = latent_grid(n, span)
    return run.decode(z).numpy()


def prior_density_grid(span: float = 3.5, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """log N(z; 0, I) for d = 2 on an n x n grid: axis (n,), values (n, n) indexed [z2, z1]."""
    axis = np.linspace(-span, span, n)
    z1, z2 = np.meshgrid(axis, axis)
    return axis, prior_log_density(np.stack([z1, z2], -1))


def dims_by_kl(kl_per_dim: np.ndarray) -> np.ndarray:
    """Latent dimensions ordered by their mean KL over the data, largest first."""
    return np.argsort(-np.asarray(kl_per_dim).mean(0), kind="stable")


def traversals(run: Run, dims: list[int], steps: int = 9, span: float = 3.0) -> np.ndarray:
    """Decode z = 0 except z_j in linspace(-span, span, steps) for each j in dims:
    (len(dims) * steps, *shape), row j of the grid varies dimension dims[j]."""
    values = np.linspace(-span, span, steps)
    z = np.zeros((len(dims), steps, run.model.latent_dim))
    for row, j in enumerate(dims):
        z[row, :, j] = values
    return run.decode(z.reshape(-1, run.model.latent_dim)).numpy()


# -- one sample's ELBO -----------------------------------------------------------------------

def sample_breakdown(run: Run, x: np.ndarray, mc_samples: int = 100, k: int = 1000, seed: int = 0) -> dict:
    """Fig 1.4 for one sample: recon, kl, elbo (M = mc_samples), the importance-sampled
    log p(x) (K = k) and the gap log p(x) - ELBO, an estimate of KL(q(z|x) || p(z|x)), with
    q(z|x)'s mu and logvar (a posterior narrower than float32 resolves makes them unreliable)."""
    x = torch.tensor(np.asarray(x, dtype=np.float32))[None]  # a copy: the arrays are read-only
    t = run.elbo_terms(x, mc_samples=mc_samples, seed=seed)
    log_px = float(run.log_px(x, k=k, seed=seed + 1)[0])
    out = {"recon": float(t["recon"][0]), "kl": float(t["kl"][0]), "elbo": float(t["elbo"][0]), "log_px": log_px}
    out["gap"] = out["log_px"] - out["elbo"]
    out["mc_samples"], out["k"] = mc_samples, k
    out["mu"], out["logvar"] = t["mu"][0].tolist(), t["logvar"][0].tolist()  # q(z|x): (d,) each
    out.update(breakdown_standard_errors(run, x, mc_samples, k, seed))
    return out


@torch.no_grad()
def breakdown_standard_errors(run: Run, x: torch.Tensor, mc_samples: int, k: int, seed: int) -> dict:
    """One standard error of sample_breakdown's Monte Carlo figures, nats, from the same
    draws (same seeds): recon's is std(log p(x|z_m)) / sqrt(M); log p(x)'s, by the delta
    method on the importance weights w_k, std(w) / (sqrt(K) mean(w)); the KL is exact (0);
    the gap's combines the two independent estimates. x: (1, *shape)."""
    model = run.model
    x_flat = x.reshape(1, -1)
    q = model.encode(x)
    z = q.sample(mc_samples, torch.Generator().manual_seed(seed))  # (M, 1, d), elbo_terms' draws
    recon = model.log_px_given_z(x_flat, model.decode(z))[:, 0].double()  # (M,)
    recon_se = float(recon.std() / math.sqrt(mc_samples)) if mc_samples > 1 else float("nan")
    z = q.sample(k, torch.Generator().manual_seed(seed + 1))  # (K, 1, d), log_px's draws
    log_w = (model.log_px_given_z(x_flat, model.decode(z)) + log_standard_normal(z) - q.log_prob(z))[:, 0].double()
    w = torch.exp(log_w - log_w.max())  # (K,) in (0, 1], the largest is 1
    log_px_se = float(w.std() / (math.sqrt(k) * w.mean())) if k > 1 else float("nan")
    return {"recon_se": recon_se, "kl_se": 0.0, "elbo_se": recon_se, "log_px_se": log_px_se,
            "gap_se": math.hypot(recon_se, log_px_se)}
