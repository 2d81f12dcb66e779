"""Data sets: the built-ins (nothing is downloaded) and the user's own files.

A data spec is a string:
  built-in   "digits" | "shapes" | "gmm2d" | "linear-gaussian", with options as
             "name:key=value,...", e.g. "linear-gaussian:d=8,sigma=0.5,n=20000".
  a file     "path/to/x.npz" (array x, optional y), ".npy", ".csv", a folder of PNG/JPEG
             images, or MNIST-format IDX files (raw or .gz); options after a last ':',
             e.g. "photos/:size=28" resizes images to 28x28. A .npy larger than 2 GiB, or a
             folder whose images decoded are (or either with option mmap=1), stays on disk and
             is read a batch at a time (trainer.mapped); such a folder is only indexed up front.

`load_dataset(spec, seed)` returns a `Dataset` with a deterministic train/test split drawn
from the seed. Images are scaled to [0, 1]; other numeric data is kept in its own units
(so that the worked examples' exact log p(x) stays exact). Every problem with the data is
a `TrainerError` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import examples
from .errors import TrainerError
from .mapped import ImageFiles, MappedRows, image_read_errors, use_mmap
from .safety import sniff

BUILTINS = ("digits", "shapes", "gmm2d", "linear-gaussian")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_COLUMNS = 1_000_000  # a CSV announcing more columns than this is refused
MAX_CSV_BYTES = 256 << 20  # a larger CSV is refused: its reader holds every cell as text (~10x the file)
MAX_FOLDER_ENTRIES = 2_000_000  # files and folders looked at under an image folder before giving up
MAX_GENERATED_VALUES = 1 << 27  # a built-in data set of more values (n x D) is refused (512 MB float32)


@dataclass
class Dataset:
    name: str  # the spec it was loaded from
    x_train: torch.Tensor | MappedRows  # (N_train, *shape) float32; MappedRows: a large .npy or image folder read in batches
    x_test: torch.Tensor | MappedRows  # (N_test, *shape) float32
    y_train: np.ndarray | None = None  # (N_train, F) labels or known factors, or None
    y_test: np.ndarray | None = None  # (N_test, F)
    label_names: list[str] = field(default_factory=list)  # F names, e.g. ["digit"]
    is_image: bool = False  # x is (C, H, W) with values in [0, 1]
    exact_log_px: Callable[[torch.Tensor], torch.Tensor] | None = None  # known density, per sample

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
        raise TrainerError("empty data spec: give a built-in name (digits, shapes, gmm2d, linear-gaussian) or a file path")
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


def _opt(options: dict, key: str, kind, default, lo=None, hi=None, where=""):
    if key not in options:
        return default
    raw = options.pop(key)
    try:
        value = kind(raw)
    except ValueError:
        raise TrainerError(f"{where}: option {key}={raw!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise TrainerError(f"{where}: option {key} must be finite")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise TrainerError(f"{where}: option {key}={raw} must be between {lo} and {hi}")
    return value


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load the data named by `spec` and split it 80/20 (option test=FRACTION) from `seed`."""
    name, options = parse_spec(spec)
    test_fraction = _opt(options, "test", float, 0.2, 0.01, 0.9, where=spec)
    if name in BUILTINS:
        x, y, label_names, is_image, exact = _BUILTIN_LOADERS[name](options, spec)
    else:
        x, y, label_names, is_image = load_file(name, options)
        exact = None
    if options:
        raise TrainerError(f"{spec}: unknown option(s) {', '.join(sorted(options))}")
    return split(spec, x, y, label_names, is_image, exact, seed, test_fraction)


def split(spec, x, y, label_names, is_image, exact, seed, test_fraction) -> Dataset:
    n = len(x)
    if n < 2:
        raise TrainerError(f"{spec}: needs at least 2 samples, found {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    ys = (None, None) if y is None else (y[train_idx.numpy()], y[test_idx.numpy()])
    if isinstance(x, MappedRows):  # larger than memory: the splits stay on disk
        return Dataset(spec, x.subset(train_idx.numpy()), x.subset(test_idx.numpy()), ys[0], ys[1],
                       label_names, is_image, exact)
    x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    return Dataset(spec, x[train_idx], x[test_idx], ys[0], ys[1], label_names, is_image, exact)


# -- built-ins ----------------------------------------------------------------------------

def _digits(options, spec):
    """scikit-learn's 8x8 digits (1797 images, 0..16), read from the file sklearn ships;
    importing sklearn itself costs ~2 s of start-up, so only its data file is used."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise TrainerError("the digits data set needs scikit-learn: pip install scikit-learn")
    path = Path(list(found.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (data[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    return x, data[:, -1:].astype(np.float64), ["digit"], True, None


def _gmm2d(options, spec):
    """Example 1.2: k equal-weight components N(mu_k, sigma^2 I) on a circle of the given radius."""
    k = _opt(options, "k", int, 5, 1, 1000, spec)
    n = _opt(options, "n", int, 10_000, 2, 10_000_000, spec)
    sigma = _opt(options, "sigma", float, 0.5, 1e-3, 100.0, spec)
    radius = _opt(options, "radius", float, 3.0, 0.0, 1000.0, spec)
    data_seed = _opt(options, "seed", int, 0, 0, 2**31, spec)
    rng = np.random.default_rng(data_seed)
    angles = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    comp = rng.integers(0, k, n)
    x = means[comp] + sigma * rng.standard_normal((n, 2))
    means_t, weights = torch.tensor(means), torch.full((k,), 1.0 / k)
    exact = lambda xs: examples.gmm_log_px(xs.reshape(len(xs), -1), means_t, sigma, weights)  # noqa: E731
    return x.astype(np.float32), comp.reshape(-1, 1).astype(np.float64), ["component"], False, exact


def _linear_gaussian(options, spec):
    """Examples 1.3-1.6: x ~ N(mu, sigma^2 I) in d dimensions, mu drawn once from the data seed."""
    d = _opt(options, "d", int, 8, 1, 10_000, spec)
    n = _opt(options, "n", int, 20_000, 2, 10_000_000, spec)
    sigma = _opt(options, "sigma", float, 0.5, 1e-3, 100.0, spec)
    data_seed = _opt(options, "seed", int, 0, 0, 2**31, spec)
    _check_generated_size(spec, n, d)
    rng = np.random.default_rng(data_seed)
    mu = rng.standard_normal(d)
    x = mu + sigma * rng.standard_normal((n, d))
    mu_t = torch.tensor(mu)
    exact = lambda xs: examples.linear_gaussian_log_px(xs.reshape(len(xs), -1), mu_t, sigma)  # noqa: E731
    return x.astype(np.float32), None, [], False, exact


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


def _shapes(options, spec):
    """Procedural sprites with known factors (shape, scale, rotation, x, y), as in dSprites."""
    n = _opt(options, "n", int, 10_000, 2, 2_000_000, spec)
    size = _opt(options, "size", int, 32, 8, 256, spec)
    data_seed = _opt(options, "seed", int, 0, 0, 2**31, spec)
    _check_generated_size(spec, n, size * size)
    rng = np.random.default_rng(data_seed)
    shape = rng.integers(0, 3, n)
    scale = rng.uniform(0.12, 0.25, n)
    rotation = rng.uniform(0, np.pi / 2, n)
    px, py = rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n)
    c = max(1, min(4096, 2**22 // (size * size)))  # images per chunk: ~32 MB per float64 temporary
    x = np.concatenate([render_shapes(shape[i:i + c], scale[i:i + c], rotation[i:i + c],
                                      px[i:i + c], py[i:i + c], size) for i in range(0, n, c)])
    y = np.stack([shape, scale, rotation, px, py], 1).astype(np.float64)
    return x[:, None], y, ["shape", "scale", "rotation", "x", "y"], True, None


def _check_generated_size(spec: str, n: int, values_per_sample: int) -> None:
    """Refuse a built-in data set too large to hold in memory, before generating it."""
    if n * values_per_sample > MAX_GENERATED_VALUES:
        raise TrainerError(f"{spec}: {n} samples of {values_per_sample} values is more than the limit of "
                           f"{MAX_GENERATED_VALUES:,} values: lower n (or d, or size)")


_BUILTIN_LOADERS = {"digits": _digits, "shapes": _shapes, "gmm2d": _gmm2d, "linear-gaussian": _linear_gaussian}


# -- the user's files -----------------------------------------------------------------------

def load_file(path: str, options: dict) -> tuple[np.ndarray, np.ndarray | None, list[str], bool]:
    """Read a user's file or folder into (x, y, label_names, is_image); raises TrainerError."""
    p = Path(path)
    if not p.exists():
        raise TrainerError(f"{path}: no such file or folder (built-in data sets are {', '.join(BUILTINS)})")
    if p.is_dir():
        return _load_image_folder(p, options)
    if p.stat().st_size == 0:
        raise TrainerError(f"{path}: the file is empty")
    suffix = p.name.lower()
    if suffix.endswith(".gz"):
        suffix = suffix[:-3]
    if suffix.endswith(".npz"):
        x, y = _load_npz(p)
    elif suffix.endswith(".npy"):
        x, y = _load_npy(p, options.pop("mmap", None)), None
    elif suffix.endswith(".csv"):
        return _load_csv(p, options)
    elif "idx" in suffix or suffix.endswith("-ubyte"):
        x, y = _load_idx_pair(p)
    elif suffix.endswith(IMAGE_SUFFIXES):
        raise TrainerError(f"{path}: a single image is not a data set: give the folder that holds the images")
    else:
        raise TrainerError(f"{path}: unknown file type: use .npz, .npy, .csv, IDX files or a folder of images")
    return _finish_array(p, x, y)


def _finish_array(p: Path, x: np.ndarray, y: np.ndarray | None):
    """Check an array of samples, infer image layout, scale integer images to [0, 1]."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TrainerError(f"{p}: the data is not numeric (dtype {x.dtype})")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise TrainerError(f"{p}: complex numbers are not supported")
    if x.ndim < 2 or len(x) == 0 or x[0].size == 0:
        raise TrainerError(f"{p}: expected an array of samples (N, D) or images (N, H, W[, C]), got shape {list(x.shape)}")
    is_image = x.ndim >= 3
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = np.moveaxis(x, -1, 1)  # channels last -> channels first
    elif x.ndim > 4:
        raise TrainerError(f"{p}: arrays of {x.ndim} dimensions are not supported; use (N, D) or (N, C, H, W)")
    integer = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
    if isinstance(x, np.memmap):  # a large .npy (see _load_npy): checked in chunks, read in batches
        rows = MappedRows(x, from_255=integer and is_image, name=str(p))
        rows.check_values(integer_images=integer and is_image)
        return rows, (None if y is None else _check_labels(p, y, len(rows))), \
            (["label"] if y is not None else []), is_image
    xf = np.asarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise TrainerError(f"{p}: the data contains NaN or infinite values")
    if integer and is_image:
        if xf.min() < 0 or xf.max() > 255:
            raise TrainerError(f"{p}: integer images must have values in 0..255")
        xf = xf / 255.0
    if y is not None:
        y = _check_labels(p, y, len(xf))
    return xf, y, (["label"] if y is not None else []), is_image


def _check_labels(p: Path, y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise TrainerError(f"{p}: {len(y) if y.ndim else 0} labels for {n} samples: labels must match the samples one to one")
    if not np.issubdtype(y.dtype, np.number):
        _, y = np.unique(y.astype(str), return_inverse=True)
    y = y.reshape(n, -1).astype(np.float64)
    if not np.isfinite(y).all():
        raise TrainerError(f"{p}: the labels contain NaN or infinite values")
    return y


def _check_signature(p: Path, kind: str, what: str, writer: str) -> None:
    """Refuse a file whose first bytes are not those of `kind` (safety.sniff's name for the
    format: a text file named .npz), before numpy's reader takes anything unknown for pickled data."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise TrainerError(f"{p}: cannot read the file ({e.strerror or e})") from None
    if sniff(head) != kind:
        raise TrainerError(f"{p}: not a {what} file (its first bytes are not that format's): "
                           f"save the data with numpy's {writer}, or give the file the extension of its content")


def _load_npz(p: Path):
    _check_signature(p, "zip", ".npz", "np.savez")
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f.files:
                raise TrainerError(f"{p}: the .npz has no array named 'x' (it has: {', '.join(f.files)[:100] or 'none'})")
            return f["x"], (f["y"] if "y" in f.files else None)
    except TrainerError:
        raise
    except ValueError as e:  # object arrays need pickle, which is never allowed
        raise TrainerError(f"{p}: cannot read the .npz without unpickling ({e}); save plain numeric arrays") from None
    except Exception as e:
        raise TrainerError(f"{p}: not a readable .npz file ({type(e).__name__})") from None


def _load_npy(p: Path, mmap_option: str | None = None) -> np.ndarray:
    """The array, memory-mapped (an np.memmap, never read whole) when mapped.use_mmap says so:
    a file above the size threshold, or the spec option mmap=1."""
    _check_signature(p, "npy", ".npy", "np.save")
    mmap = "r" if use_mmap(p, mmap_option) else None
    try:
        return np.load(p, mmap_mode=mmap, allow_pickle=False)
    except ValueError as e:
        raise TrainerError(f"{p}: cannot read the .npy without unpickling ({e}); save a plain numeric array") from None
    except Exception as e:
        raise TrainerError(f"{p}: not a readable .npy file ({type(e).__name__})") from None


def _load_csv(p: Path, options: dict):
    """Numeric columns; a header row is optional; a label column is taken from option
    label=NAME (or column index), or a header column named label, y, class or target."""
    label_opt = options.pop("label", None)
    size = p.stat().st_size
    if size > MAX_CSV_BYTES:
        raise TrainerError(f"{p}: the CSV is {size / 2**20:,.0f} MB, more than the CSV reader's limit of "
                           f"{MAX_CSV_BYTES / 2**20:,.0f} MB (it holds every cell as text): save the array "
                           "with numpy's np.save and train from the .npy, which is read in batches")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise TrainerError(f"{p}: not a text CSV file (it is not UTF-8)") from None
    except (csv.Error, OSError) as e:
        raise TrainerError(f"{p}: cannot read the CSV ({e})") from None
    if not rows:
        raise TrainerError(f"{p}: the CSV has no rows")
    if len(rows[0]) > MAX_COLUMNS:
        raise TrainerError(f"{p}: the CSV has {len(rows[0])} columns, more than the limit {MAX_COLUMNS}")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    header = None if all(numeric(c) for c in rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header else rows
    if not body:
        raise TrainerError(f"{p}: the CSV has a header but no data rows")
    width = len(rows[0])
    label_col = None
    if label_opt is not None:
        if header and label_opt in header:
            label_col = header.index(label_opt)
        elif label_opt.lstrip("-").isdigit() and -width <= int(label_opt) < width:
            label_col = int(label_opt) % width
        else:
            raise TrainerError(f"{p}: no column {label_opt!r} to use as labels")
    elif header:
        for name in ("label", "y", "class", "target"):
            if name in header:
                label_col = header.index(name)
                break
    x = np.empty((len(body), width - (label_col is not None)), dtype=np.float32)
    labels: list[str] = []
    for i, row in enumerate(body):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise TrainerError(f"{p}: line {line} has {len(row)} values, expected {width} (ragged rows)")
        if label_col is not None:
            labels.append(row[label_col].strip())
            row = row[:label_col] + row[label_col + 1:]
        try:
            x[i] = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not numeric(c))
            raise TrainerError(f"{p}: line {line} has a non-numeric value {bad[:30]!r}") from None
    if x.shape[1] == 0:
        raise TrainerError(f"{p}: the CSV has no data columns besides the labels")
    if not np.isfinite(x).all():
        raise TrainerError(f"{p}: the CSV contains NaN or infinite values")
    y = None
    if label_col is not None:
        try:
            y = np.array([float(v) for v in labels])
        except ValueError:
            y = np.array(labels)
        y = _check_labels(p, y, len(x))
    return x, y, (["label"] if y is not None else []), False


def _read_idx(p: Path) -> np.ndarray:
    """MNIST's IDX format: 2 zero bytes, a type byte (0x08 = ubyte), a rank byte, big-endian sizes."""
    try:
        raw = gzip.open(p).read() if p.name.endswith(".gz") else p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged .gz stream
        raise TrainerError(f"{p}: cannot read the IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TrainerError(f"{p}: not an IDX file (bad magic number)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise TrainerError(f"{p}: unknown IDX data type {raw[2]:#x}")
    rank = raw[3]
    if rank == 0 or len(raw) < 4 + 4 * rank:
        raise TrainerError(f"{p}: truncated IDX header")
    dims = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    dtype = np.dtype(types[raw[2]])
    need = math.prod(dims) * dtype.itemsize
    body = raw[4 + 4 * rank:]
    if len(body) != need:
        raise TrainerError(f"{p}: IDX header promises {need} bytes of data but the file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _load_idx_pair(p: Path):
    x = _read_idx(p)
    labels_path = p.with_name(p.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1"))
    y = _read_idx(labels_path) if labels_path != p and labels_path.exists() else None
    return x, y


def _load_image_folder(folder: Path, options: dict):
    """PNG/JPEG files in a folder; files in subfolders take the subfolder's name as label.

    The folder is indexed first: each file's header only (size and mode, no pixels). Images
    larger than mapped.use_mmap's threshold once decoded (N*C*H*W bytes), or any size with
    option mmap=1, stay on disk and are decoded a batch at a time (MappedRows over
    ImageFiles); otherwise they are decoded now into one array, through the same ImageFiles."""
    from PIL import Image

    size_opt = options.pop("size", None)
    mmap_option = options.pop("mmap", None)
    if mmap_option is not None:
        use_mmap(folder, mmap_option)  # a bad value is refused before the folder is indexed
    size = None
    if size_opt is not None:
        h, _, w = size_opt.lower().partition("x")
        try:
            size = (int(h), int(w or h))
        except ValueError:
            raise TrainerError(f"{folder}: option size={size_opt!r} must be N or HxW, e.g. size=28") from None
        if not (1 <= size[0] <= 1024 and 1 <= size[1] <= 1024):
            raise TrainerError(f"{folder}: option size must be between 1 and 1024")
    files = sorted(f for f in _walk(folder) if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainerError(f"{folder}: the folder has no PNG or JPEG images")
    modes, sizes = set(), set()
    for f in files:
        try:
            with Image.open(f) as im:  # reads the header only: size and mode
                modes.add("L" if im.mode in ("1", "L", "I;16", "I", "LA") else "RGB")
                sizes.add(im.size)
        except image_read_errors() as e:
            raise TrainerError(f"{f}: cannot read the image ({type(e).__name__})") from None
    mode = "L" if modes == {"L"} else "RGB"
    if size is None and len(sizes) > 1:
        (a, b) = sorted(sizes)[:2]
        raise TrainerError(f"{folder}: images have different sizes ({a[1]}x{a[0]} and {b[1]}x{b[0]}): "
                           f"add ':size=H' or ':size=HxW' to the spec to resize them")
    if size is None:
        w, h = next(iter(sizes))
        size = (h, w)
    images = ImageFiles(files, mode, size, resize=size_opt is not None)
    classes = sorted({f.parent.relative_to(folder).as_posix() for f in files})
    y = None
    if classes != ["."]:
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[f.parent.relative_to(folder).as_posix()] for f in files], dtype=np.float64)[:, None]
    label_names = ["folder"] if y is not None else []
    if use_mmap(folder, mmap_option, images.nbytes):
        # uint8 by construction: always finite and within 0..255, so no check pass
        return MappedRows(images, from_255=True, name=str(folder)), y, label_names, True
    return images[:].astype(np.float32) / 255.0, y, label_names, True


def _walk(folder: Path):
    """The files under `folder` (subfolders included); a TrainerError once more than
    MAX_FOLDER_ENTRIES entries were looked at (a spec naming '/' or a home folder)."""
    seen = 0
    for f in folder.rglob("*"):
        seen += 1
        if seen > MAX_FOLDER_ENTRIES:
            raise TrainerError(f"{folder}: the folder holds more than {MAX_FOLDER_ENTRIES:,} files and folders: "
                               "give the folder of the data set itself")
        if f.is_file():
            yield f


__all__ = ["Dataset", "BUILTINS", "load_dataset", "parse_spec", "render_shapes"]
