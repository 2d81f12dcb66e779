"""What the views show, computed from a trained run: encodings, projections, paths, decodes.

Each computation is a plain function of a `trainer.Run` (or of arrays) that tests call
directly; the `cached_*` wrappers memoise them with st.cache_data, keyed on the run folder
and its checkpoint's modification time, so that a new checkpoint is never served stale
results. All ELBO numbers are per sample, in nats, with the sign of a log-likelihood
(higher is better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from trainer import Run

from .runs import checkpoint_mtime, open_run

LOG_2PI = math.log(2 * math.pi)
T_STEPS = 101  # interpolation frames: t = 0, 0.01, ..., 1 (the slider's steps)
MAX_DISCRETE = 20  # a label column with at most this many integer values is a category


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

    @property
    def n(self) -> int:
        return len(self.mu)

    @property
    def latent_dim(self) -> int:
        return self.mu.shape[1]


def encode_test(run: Run, batch_size: int = 1000) -> Encoded:
    """Encode the run's test split and compute each sample's ELBO terms (fixed eps, seed 0)."""
    data = run.load_data()
    x = data.x_test
    parts = []
    for i in range(0, len(x), batch_size):
        t = run.elbo_terms(x[i:i + batch_size], mc_samples=1, seed=i)
        parts.append({k: v.numpy() for k, v in t.items()})
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Encoded(x.numpy(), cat["mu"], cat["logvar"], cat["recon"], cat["kl"], cat["elbo"],
                   cat["kl_per_dim"], data.y_test, list(data.label_names), data.is_image)


def active_dims(mu: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """(d,) bool: dimensions whose posterior mean varies over the data, Cov_x(E_q[z_j]) > 0.01
    (the trainer's active-units rule, Burda et al. 2016)."""
    return mu.var(0, ddof=1) > threshold if len(mu) > 1 else np.zeros(mu.shape[1], bool)


def is_discrete(values: np.ndarray) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(np.all(v == np.round(v)) and len(np.unique(v)) <= MAX_DISCRETE)


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
    straight line cuts inside it, slerp keeps to it. Falls back to lerp for (anti)parallel
    or zero endpoints."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return lerp(a, b, t[..., 0])
    ua, ub = a / na, b / nb
    omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
    if omega < 1e-6 or math.pi - omega < 1e-6:
        return lerp(a, b, t[..., 0])
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
    """log N(z; 0, I) per code, nats: (..., d) -> (...)."""
    z = np.asarray(z, dtype=np.float64)
    return -0.5 * (z ** 2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


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


def manifold_background(images: np.ndarray, n: int, span: float, scale: int = 4) -> tuple[np.ndarray, float]:
    """The decoded grid (n*n, C, H, W) as one picture to lay under the latent map: dark ink on
    a light ground (so coloured points stay visible), 1-px light gaps between tiles, scaled up
    with sharp pixels. Returns (uint8 image, half-width of its extent in latent units), the
    extent chosen so that each tile is centred on the code it was decoded from."""
    from trainer.images import to_grid

    grid = to_grid(1.0 - images_for_display(images), ncols=n, pad=1)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return grid, span * (1 + 1 / (n - 1)) if n > 1 else span


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


def sample_breakdown(run: Run, x: np.ndarray, mc_samples: int = 100, k: int = 1000, seed: int = 0) -> dict:
    """Fig 1.4 for one sample: recon, kl, elbo (M = mc_samples), the importance-sampled
    log p(x) (K = k) and the gap log p(x) - ELBO, an estimate of KL(q(z|x) || p(z|x))."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))[None]
    t = run.elbo_terms(x, mc_samples=mc_samples, seed=seed)
    log_px = float(run.log_px(x, k=k, seed=seed + 1)[0])
    out = {"recon": float(t["recon"][0]), "kl": float(t["kl"][0]), "elbo": float(t["elbo"][0]), "log_px": log_px}
    out["gap"] = out["log_px"] - out["elbo"]
    out["mc_samples"], out["k"] = mc_samples, k
    return out


def images_for_display(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) decoded means -> clipped to [0, 1] for display."""
    return np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)


def png(images: np.ndarray, ncols: int | None = None, size: int = 64) -> bytes:
    """A grid of images (N, C, H, W) in [0, 1] as PNG bytes, each scaled up with sharp pixels
    to about `size` pixels."""
    from trainer.images import png_bytes, to_grid

    images = images_for_display(images)
    h = images.shape[-2]
    return png_bytes(to_grid(images, ncols=ncols), scale=max(1, round(size / h)))


def png_data_url(images: np.ndarray, ncols: int | None = None, size: int = 64) -> str:
    """png() as a data: URL, which st.image passes to the page as it is (no media file)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png(images, ncols, size)).decode("ascii")


# -- cached entry points for the views -------------------------------------------------------

def _key(path: Path) -> tuple[str, float]:
    return str(Path(path).resolve()), checkpoint_mtime(path)


@st.cache_data(max_entries=16, show_spinner=False)
def _encoded(path: str, mtime: float) -> Encoded:
    return encode_test(open_run(Path(path)))


def cached_encoded(path: Path) -> Encoded:
    return _encoded(*_key(path))


@st.cache_data(max_entries=32, show_spinner=False)
def _projection(path: str, mtime: float, method: str) -> Projection:
    return project(_encoded(path, mtime).mu, method)


def cached_projection(path: Path, method: str) -> Projection:
    return _projection(*_key(path), method)


@st.cache_data(max_entries=64, show_spinner=False)
def _path_frames(path: str, mtime: float, a: int, b: int, method: str) -> PathFrames:
    enc = _encoded(path, mtime)
    return path_frames(open_run(Path(path)), enc.mu[a], enc.mu[b], method)


def cached_path_frames(path: Path, a: int, b: int, method: str) -> PathFrames:
    return _path_frames(*_key(path), int(a), int(b), method)


@st.cache_data(max_entries=16, show_spinner=False)
def _manifold(path: str, mtime: float, n: int, span: float) -> np.ndarray:
    return manifold(open_run(Path(path)), n, span)


def cached_manifold(path: Path, n: int, span: float) -> np.ndarray:
    return _manifold(*_key(path), n, span)


@st.cache_data(max_entries=64, show_spinner=False)
def _breakdown(path: str, mtime: float, index: int) -> dict:
    return sample_breakdown(open_run(Path(path)), _encoded(path, mtime).x[index])


def cached_breakdown(path: Path, index: int) -> dict:
    return _breakdown(*_key(path), int(index))


@st.cache_data(max_entries=32, show_spinner=False)
def _samples(path: str, mtime: float, n: int, seed: int) -> np.ndarray:
    return open_run(Path(path)).generate(n, seed).numpy()


def cached_samples(path: Path, n: int, seed: int) -> np.ndarray:
    return _samples(*_key(path), n, seed)


@st.cache_data(max_entries=16, show_spinner=False)
def _traversals(path: str, mtime: float, dims: tuple[int, ...], steps: int, span: float) -> np.ndarray:
    return traversals(open_run(Path(path)), list(dims), steps, span)


def cached_traversals(path: Path, dims: list[int], steps: int, span: float) -> np.ndarray:
    return _traversals(*_key(path), tuple(int(d) for d in dims), steps, span)


@st.cache_data(max_entries=16, show_spinner=False)
def _reconstructions(path: str, mtime: float) -> np.ndarray:
    return open_run(Path(path)).decode(_encoded(path, mtime).mu).numpy()


def cached_reconstructions(path: Path) -> np.ndarray:
    """f(mu(x)) for every test sample: the decoded posterior means, (N, *shape)."""
    return _reconstructions(*_key(path))


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
        return v, is_discrete(v)
    terms = {"ELBO": enc.elbo, "recon": enc.recon, "KL": enc.kl}
    if option in terms:
        return terms[option], False
    if option.startswith("z") and option[1:].isdigit() and 1 <= int(option[1:]) <= enc.latent_dim:
        return enc.mu[:, int(option[1:]) - 1], False
    raise ValueError(f"unknown colour option {option!r}")


def category_names(option: str) -> dict[float, str] | None:
    """Readable names for known categorical labels (the shapes data set's shape factor)."""
    if option == "shape":
        from trainer.data import SHAPE_NAMES

        return {float(i): n for i, n in enumerate(SHAPE_NAMES)}
    return None


EVAL_K = 100  # importance samples per test sample for the Runs table's log p(x)


@st.cache_data(max_entries=64, show_spinner=False)
def _evaluation(path: str, mtime: float, k: int) -> dict:
    from trainer import evaluate_run

    return evaluate_run(open_run(Path(path)), "test", k=k)


def cached_evaluation(path: Path, k: int = EVAL_K) -> dict:
    """trainer.evaluate_run on the test split: elbo, recon, kl, log_px (K = k), gap, active
    units; per-sample means, nats."""
    return _evaluation(*_key(path), k)
