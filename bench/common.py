"""What every section shares: sizes, the run's context, timing helpers and result rows."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trainer import RunConfig
from trainer.data import Dataset
from trainer.train import set_threads

from . import data as bench_data


@dataclass
class Sizes:
    """How much work each section does. `full` runs in minutes on 2 cores; `quick` in seconds."""

    n_train: int = 60_000  # generated 28 x 28 training images (MNIST's size)
    n_test: int = 10_000  # held-out images
    epochs: int = 5  # epochs of ours and of the peer in section 1 (the first is warm-up; median of the rest)
    hidden: tuple[int, ...] = (512, 256)  # MLP hidden sizes, encoder order
    latent_dim: int = 16  # d of the MNIST-sized model
    batch_size: int = 128
    lr: float = 1e-3
    peak_sizes: tuple[int, ...] = (1024, 2048)  # square matmuls timed for the float32 peak
    peak_seconds: float = 0.5  # timing budget per size of the peak measurement
    bf16_n: int = 10_000  # training images of the bfloat16-autocast comparison
    bf16_epochs: int = 3
    digits_epochs: int = 20  # epochs timed in the digits-epoch measurement
    scaling: tuple[int, ...] = (10_000, 30_000, 60_000, 120_000)  # training set sizes
    flat_epochs: int = 6  # epochs of the 60k run whose times should stay flat
    dist_n: int = 20_000  # images of the 1-vs-2-processes runs (bench/distributed.py; 80% train)
    dist_epochs: int = 3
    calls: int = 200  # decode calls for p50/p95
    encode_n: int = 10_000  # test set encoded at once
    pca_n: int = 70_000  # codes projected by PCA
    tsne_n: int = 2_000  # codes embedded by t-SNE
    iwae_n: int = 1_000  # samples of the IWAE log p(x) estimate
    iwae_k: int = 1_000  # importance samples per x
    browser_moves: int = 30  # slider moves timed in the browser
    rss_n: int = 75_000  # rows of the .npy file of the memory run (80/20 split: 60,000 train)
    quality_epochs: int = 50  # digits epochs of ours and the peer in the quality comparison
    quality_k: int = 1_000  # importance samples of both log p(x) estimators

    @classmethod
    def quick(cls) -> "Sizes":
        """Tiny sizes: every section runs end to end in seconds (the smoke test uses these)."""
        return cls(peak_sizes=(256,), peak_seconds=0.05, n_train=1024, n_test=256, epochs=2, bf16_n=512, bf16_epochs=1, digits_epochs=3,
                   scaling=(512, 1024), flat_epochs=2, dist_n=1000, dist_epochs=2, calls=20, encode_n=512, pca_n=2000, tsne_n=200,
                   iwae_n=50, iwae_k=50, browser_moves=3, rss_n=2000, quality_epochs=2, quality_k=20)


@dataclass
class Row:
    """One line of the results table."""

    section: str  # "1" .. "8"
    name: str  # what was measured
    value: float | None  # the figure, in `unit`
    unit: str
    ratio: float | None = None  # value against the same-run baseline named in `baseline`
    baseline: str = ""
    target: str = ""  # e.g. ">= 2x", "< 20 ms"
    met: bool | None = None  # whether the target is met (None: no target)
    note: str = ""


@dataclass
class Context:
    sizes: Sizes
    threads: int  # the thread count of the main runs (all cores by default)
    workdir: Path  # temporary folder for run folders and data files
    quick: bool = False
    before: str = ""  # --before REV: section 6 measures REV's pages beside these (bench/before_after.py)
    before_rounds: int = 5
    rows: list[Row] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)  # section id -> its detailed results
    cache: dict[str, Any] = field(default_factory=dict)  # things one section builds and a later one reuses

    def row(self, *args, **kwargs) -> Row:
        r = Row(*args, **kwargs)
        self.rows.append(r)
        return r

    def peak(self, threads: int) -> dict:
        """The float32 matmul peak at `threads`, measured once per run (cpu.matmul_peak)."""
        from .cpu import matmul_peak

        peaks = self.cache.setdefault("peaks", {})
        if threads not in peaks:
            peaks[threads] = matmul_peak(threads, self.sizes.peak_sizes, self.sizes.peak_seconds)
        return peaks[threads]

    def blobs(self) -> Dataset:
        """The MNIST-sized generated data set, n_train + n_test images (built once)."""
        if "blobs" not in self.cache:
            s = self.sizes
            x = bench_data.blobs(s.n_train + s.n_test, seed=0)
            self.cache["blobs"] = Dataset("blobs", x[:s.n_train], x[s.n_train:], is_image=True)
        return self.cache["blobs"]

    def mnist_config(self, epochs: int = 1, seed: int = 0) -> RunConfig:
        """Our run config for the MNIST-sized comparison: 784-512-256-(16), Bernoulli."""
        s = self.sizes
        cfg = RunConfig(data="blobs")
        cfg.model.hidden = list(s.hidden)
        cfg.model.latent_dim = s.latent_dim
        cfg.model.likelihood = "bernoulli"
        cfg.train.batch_size, cfg.train.lr, cfg.train.epochs, cfg.train.seed = s.batch_size, s.lr, epochs, seed
        cfg.train.device = "cpu"
        return cfg


def sizes_dict(s: Sizes) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(s).items()}


def use_threads(n: int) -> None:
    """Set torch's threads the way the trainer does (also flushes denormals to zero)."""
    set_threads(n)


def matrix_weights(data_dim: int, hidden: list[int] | tuple[int, ...], latent_dim: int) -> int:
    """Weights of the MLP VAE's matrices (biases left out): D-h1-..-2d encoder, d-..-h1-D decoder."""
    enc = [data_dim, *hidden, 2 * latent_dim]
    dec = [latent_dim, *reversed(hidden), data_dim]
    return sum(a * b for a, b in zip(enc[:-1], enc[1:])) + sum(a * b for a, b in zip(dec[:-1], dec[1:]))


def train_flop_per_sample(weights: int) -> float:
    """Matrix FLOP of one training sample: 2 x weights forward, twice that backward."""
    return 6.0 * weights


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def time_calls(fn: Callable[[], Any], calls: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `calls` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls (after one untimed call), seconds."""
    fn()
    return min(time_calls(fn, repeats, warmup=0))


@torch.no_grad()
def encode_mu(model, x: torch.Tensor, batch: int = 10_000) -> torch.Tensor:
    """Posterior means (N, d) of x, in batches."""
    model.eval()
    return torch.cat([model.encode(x[i:i + batch]).mu for i in range(0, len(x), batch)])
