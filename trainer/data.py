"""Data sets: the built-ins (nothing is downloaded), spec parsing, and the train/test split.

A data spec is a string:
  built-in   a name in `DATASETS` (the registry below), with options as
             "name:key=value,...", e.g. "linear-gaussian:d=8,sigma=0.5,n=20000".
  a file     "path/to/x.npz" (array x, optional y), ".npy", ".csv", a folder of PNG/JPEG
             images, or MNIST-format IDX files (raw or .gz); options after a last ':',
             e.g. "photos/:size=28" resizes images to 28x28. A .npy larger than 2 GiB, or a
             folder whose images decoded are (or either with option mmap=1), stays on disk and
             is read a batch at a time (trainer.mapped); such a folder is only indexed up front.
             The readers of these formats live in trainer.formats.

`DATASETS` is the registry of the built-ins: each one's loader, one line of help, its
options (defaults and ranges) and whether its exact log p(x) is known; the CLI, the app's
Train form and the error messages read it. Every loader returns a `formats.LoadedData`.

`load_dataset(spec, seed)` returns a `Dataset` with a deterministic train/test split drawn
from the seed. Images are scaled to [0, 1]; other numeric data is kept in its own units
(so that the worked examples' exact log p(x) stays exact). Every problem with the data is
a `TrainerError` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import examples
from .errors import TrainerError
from .formats import LoadedData, read_path
from .mapped import MappedRows

MAX_GENERATED_VALUES = 1 << 27  # a built-in data set of more values (n x D) is refused (512 MB float32)


@dataclass
class Dataset:
    """One data set split for training: what training, evaluation and the app read."""

    name: str  # the spec it was loaded from
    x_train: torch.Tensor | MappedRows  # (N_train, *shape) float32; MappedRows: a large .npy or image folder read in batches
    x_test: torch.Tensor | MappedRows  # (N_test, *shape) float32
    y_train: np.ndarray | None = None  # (N_train, F) labels or known factors, or None
    y_test: np.ndarray | None = None  # (N_test, F)
    label_names: list[str] = field(default_factory=list)  # F names, e.g. ["digit"]
    is_image: bool = False  # x is (C, H, W) with values in [0, 1]
    exact_log_px: Callable[[torch.Tensor], torch.Tensor] | None = None  # known density, per sample
    feature_names: list[str] = field(default_factory=list)  # D names of x's values (non-image data), else []
    class_names: list[str] = field(default_factory=list)  # the label's category names (y == i), else []
    display_name: str = ""  # the name to show: the file's own name (not its path), or the built-in's

    @property
    def label_name(self) -> str | None:
        """The (first) label's name, e.g. "target", or None without labels."""
        return self.label_names[0] if self.label_names else None

    def names(self) -> dict:
        """The names a run keeps (runs.DATA_INFO): name, feature_names, label_name, label_names,
        class_names."""
        return {"name": self.display_name, "feature_names": list(self.feature_names),
                "label_name": self.label_name, "label_names": list(self.label_names),
                "class_names": list(self.class_names)}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def value_range(self) -> tuple[float, float]:
        """The smallest and largest value over both splits (a likelihood checks its support)."""
        return (min(float(self.x_train.min()), float(self.x_test.min())),
                max(float(self.x_train.max()), float(self.x_test.max())))


# -- spec parsing -------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split "name:key=value,..." into (name, options). A path that exists is never split."""
    if not isinstance(spec, str) or not spec.strip():
        raise TrainerError(f"empty data spec: give a built-in name ({', '.join(BUILTINS)}) or a file path")
    spec = spec.strip()
    if "\x00" in spec:
        raise TrainerError("data spec contains a NUL character")
    if os.path.exists(spec):
        return spec, {}
    name, sep, rest = spec.rpartition(":")
    if not sep or not name:
        return spec, {}
    options: dict[str, str] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise TrainerError(f"bad option {item!r} in data spec {spec!r}: write key=value, e.g. digits:test=0.2")
        options[key.strip()] = value.strip()
    return name, options


@dataclass(frozen=True)
class Option:
    """One numeric option of a data spec, written "name:key=value"."""

    key: str  # as written in the spec, e.g. "sigma"
    kind: type  # int or float: how its text is read
    default: int | float  # the value when the spec does not give it
    lo: int | float  # the smallest value accepted
    hi: int | float  # the largest value accepted
    help: str  # a few words on what it sets, e.g. "noise scale"

    def read(self, options: dict, where: str) -> int | float:
        """Pop this option from `options` and check it; the default when absent. `where`
        (the spec) starts the message of a TrainerError."""
        if self.key not in options:
            return self.default
        raw = options.pop(self.key)
        try:
            value = self.kind(raw)
        except ValueError:
            raise TrainerError(f"{where}: option {self.key}={raw!r} is not a valid {self.kind.__name__}") from None
        if self.kind is float and not math.isfinite(value):
            raise TrainerError(f"{where}: option {self.key} must be finite")
        if value < self.lo or value > self.hi:
            raise TrainerError(f"{where}: option {self.key}={raw} must be between {self.lo} and {self.hi}")
        return value

    def describe(self) -> str:
        """For help texts, e.g. "k=5 (components, 1..1000)"."""
        return f"{self.key}={_number(self.default)} ({self.help}, {_number(self.lo)}..{_number(self.hi)})"


def _number(v: int | float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


TEST_OPTION = Option("test", float, 0.2, 0.01, 0.9, "test fraction")  # every spec takes it


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load the data named by `spec` and split it 80/20 (option test=FRACTION) from `seed`."""
    name, options = parse_spec(spec)
    test_fraction = TEST_OPTION.read(options, spec)
    if name in DATASETS:
        builtin = DATASETS[name]
        values = {o.key: o.read(options, spec) for o in builtin.options}  # in the order listed
        loaded = builtin.load(spec, **values)
        loaded.name = loaded.name or name
    else:
        loaded = load_file(name, options)
    if options:
        raise TrainerError(f"{spec}: unknown option(s) {', '.join(sorted(options))}")
    return split(spec, loaded, seed, test_fraction)


def load_file(path: str, options: dict) -> LoadedData:
    """Read a user's file or folder (see trainer.formats); raises TrainerError."""
    if not Path(path).exists():
        raise TrainerError(f"{path}: no such file or folder (built-in data sets are {', '.join(BUILTINS)})")
    return read_path(path, options)


def split(spec: str, data: LoadedData, seed: int, test_fraction: float) -> Dataset:
    """A random test set of round(N * test_fraction) samples (at least 1, leaving 1 to train
    on), drawn from `seed`; both splits keep the samples' order."""
    n = len(data.x)
    if n < 2:
        raise TrainerError(f"{spec}: needs at least 2 samples, found {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    y = data.y
    ys = (None, None) if y is None else (y[train_idx.numpy()], y[test_idx.numpy()])
    features = list(data.feature_names) or ([] if data.is_image else [f"x{j + 1}" for j in range(math.prod(data.x.shape[1:]))])
    names = dict(feature_names=features, class_names=list(data.class_names),
                 display_name=data.name or spec)
    if isinstance(data.x, MappedRows):  # larger than memory: the splits stay on disk
        return Dataset(spec, data.x.subset(train_idx.numpy()), data.x.subset(test_idx.numpy()), ys[0], ys[1],
                       data.label_names, data.is_image, data.exact_log_px, **names)
    x = torch.as_tensor(np.ascontiguousarray(data.x), dtype=torch.float32)
    return Dataset(spec, x[train_idx], x[test_idx], ys[0], ys[1], data.label_names, data.is_image,
                   data.exact_log_px, **names)


# -- built-ins ----------------------------------------------------------------------------
#
# Each loader takes the spec (for messages) and its options' values by key, and returns
# all the samples as a LoadedData; the registry DATASETS below lists them with their options.

def _digits(spec: str) -> LoadedData:
    """scikit-learn's 8x8 digits (1797 images, 0..16), read from the file sklearn ships;
    importing sklearn itself costs ~2 s of start-up, so only its data file is used."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise TrainerError("the digits data set needs scikit-learn: pip install scikit-learn")
    path = Path(list(found.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (data[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    return LoadedData(x, data[:, -1:].astype(np.float64), ["digit"], is_image=True)


def _gmm2d(spec: str, k: int, n: int, sigma: float, radius: float, seed: int) -> LoadedData:
    """Example 1.2: k equal-weight components N(mu_k, sigma^2 I) on a circle of the given radius."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    comp = rng.integers(0, k, n)
    x = means[comp] + sigma * rng.standard_normal((n, 2))
    means_t, weights = torch.tensor(means), torch.full((k,), 1.0 / k)
    exact = lambda xs: examples.gmm_log_px(xs.reshape(len(xs), -1), means_t, sigma, weights)  # noqa: E731
    return LoadedData(x.astype(np.float32), comp.reshape(-1, 1).astype(np.float64), ["component"],
                      is_image=False, exact_log_px=exact)


def _linear_gaussian(spec: str, d: int, n: int, sigma: float, seed: int) -> LoadedData:
    """Examples 1.3-1.6: x ~ N(mu, sigma^2 I) in d dimensions, mu drawn once from the data seed."""
    _check_generated_size(spec, n, d)
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d)
    x = mu + sigma * rng.standard_normal((n, d))
    mu_t = torch.tensor(mu)
    exact = lambda xs: examples.linear_gaussian_log_px(xs.reshape(len(xs), -1), mu_t, sigma)  # noqa: E731
    return LoadedData(x.astype(np.float32), None, [], is_image=False, exact_log_px=exact)


SHAPE_NAMES = ("square", "ellipse", "triangle")


def render_shapes(shape, scale, rotation, px, py, size: int) -> np.ndarray:
    """Draw binary sprites: one per factor tuple. Arrays of length N -> (N, size, size) float32.

    shape: 0 square, 1 ellipse, 2 triangle; scale: half-width as a fraction of the image;
    rotation in radians; (px, py): centre in [0, 1] image coordinates.
    """
    c = (np.arange(size) + 0.5) / size
    gx, gy = np.meshgrid(c, c)  # (size, size), x to the right, y down
    dx = gx[None] - px[:, None, None]
    dy = gy[None] - py[:, None, None]
    cos, sin = np.cos(rotation)[:, None, None], np.sin(rotation)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]  # sprite coordinates, the shape spans [-1, 1]
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    square = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    ellipse = u**2 + (v / 0.6) ** 2 <= 1
    triangle = (v <= 0.8) & (v >= 1.6 * np.abs(u) - 1.0)
    s = shape[:, None, None]
    img = np.where(s == 0, square, np.where(s == 1, ellipse, triangle))
    return img.astype(np.float32)


def _shapes(spec: str, n: int, size: int, seed: int) -> LoadedData:
    """Procedural sprites with known factors (shape, scale, rotation, x, y), as in dSprites."""
    _check_generated_size(spec, n, size * size)
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, 3, n)
    scale = rng.uniform(0.12, 0.25, n)
    rotation = rng.uniform(0, np.pi / 2, n)
    px, py = rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n)
    c = max(1, min(4096, 2**22 // (size * size)))  # images per chunk: ~32 MB per float64 temporary
    x = np.concatenate([render_shapes(shape[i:i + c], scale[i:i + c], rotation[i:i + c],
                                      px[i:i + c], py[i:i + c], size) for i in range(0, n, c)])
    y = np.stack([shape, scale, rotation, px, py], 1).astype(np.float64)
    return LoadedData(x[:, None], y, ["shape", "scale", "rotation", "x", "y"], is_image=True)


def _check_generated_size(spec: str, n: int, values_per_sample: int) -> None:
    """Refuse a built-in data set too large to hold in memory, before generating it."""
    if n * values_per_sample > MAX_GENERATED_VALUES:
        raise TrainerError(f"{spec}: {n} samples of {values_per_sample} values is more than the limit of "
                           f"{MAX_GENERATED_VALUES:,} values: lower n (or d, or size)")


# -- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Builtin:
    """One built-in data set: how to make it, and what the CLI, the app and messages say of it."""

    name: str  # its name in a spec, e.g. "gmm2d"
    load: Callable[..., LoadedData]  # load(spec, **{option key: value}) -> all its samples
    help: str  # one line shown beside the name in the Train form
    options: tuple[Option, ...] = ()  # the spec options it reads, in the order they are checked
    exact_log_px: bool = False  # whether its true log p(x) is known (LoadedData.exact_log_px is set)


_DATA_SEED = Option("seed", int, 0, 0, 2**31, "data seed")

DATASETS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("digits", _digits, "8x8 images of handwritten digits (1797), labels 0-9"),
    Builtin("shapes", _shapes, "32x32 sprites: square/ellipse/triangle with scale, rotation, position (10000)",
            options=(Option("n", int, 10_000, 2, 2_000_000, "samples"),
                     Option("size", int, 32, 8, 256, "image side"),
                     _DATA_SEED)),
    Builtin("gmm2d", _gmm2d, "2-D points from a mixture of 5 Gaussians (Example 1.2; exact log p(x) known)",
            options=(Option("k", int, 5, 1, 1000, "components"),
                     Option("n", int, 10_000, 2, 10_000_000, "samples"),
                     Option("sigma", float, 0.5, 1e-3, 100.0, "noise scale"),
                     Option("radius", float, 3.0, 0.0, 1000.0, "circle radius"),
                     _DATA_SEED),
            exact_log_px=True),
    Builtin("linear-gaussian", _linear_gaussian, "8-D Gaussian data (Examples 1.3-1.6; exact log p(x) known)",
            options=(Option("d", int, 8, 1, 10_000, "dimensions"),
                     Option("n", int, 20_000, 2, 10_000_000, "samples"),
                     Option("sigma", float, 0.5, 1e-3, 100.0, "noise scale"),
                     _DATA_SEED),
            exact_log_px=True),
)}
BUILTINS = tuple(DATASETS)  # the built-ins' names, in the registry's order


def options_help() -> str:
    """Every built-in's options with their defaults and ranges, and the option all specs take,
    e.g. "gmm2d: k=5 (components, 1..1000), ...; all: test=0.2 (...)"."""
    parts = [f"{b.name}: {', '.join(o.describe() for o in b.options)}" for b in DATASETS.values() if b.options]
    return "; ".join(parts + [f"all: {TEST_OPTION.describe()}"])


__all__ = ["Dataset", "DATASETS", "BUILTINS", "Builtin", "Option", "LoadedData", "load_dataset", "load_file",
           "parse_spec", "split", "options_help", "render_shapes"]
