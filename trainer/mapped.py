"""Data larger than memory: the rows of a memory-mapped `.npy`, or of a folder of images
(`ImageFiles`), read a batch at a time.

`MappedRows` stands where `Dataset.x_train` / `x_test` are otherwise one tensor. It offers
the few tensor operations the trainer uses, each reading only the rows it needs:

    len(x), x.shape                 (N, *shape), shape of one sample after the layout fix
    x[i:j]                          rows i..j-1 as a float32 tensor on x.device
    x.index_select(0, idx)          a batch in the order of idx; the rows are read from the
                                    file in sorted order (forward through the file) and then
                                    put back in batch order, so a batch holds exactly the
                                    values the in-memory path would give
    x.to(device)                    the same rows, read batches land on `device`
    x.min(), x.max()                over every value, one pass in chunks
    x.column_stats()                mean and variance of each value (chunks), for init_from_data
    x.chunks()                      the rows in order, a chunk at a time

When data is read this way (see `use_mmap`): a `.npy` file, or a folder's images decoded
(N*C*H*W bytes), larger than `DEFAULT_THRESHOLD_BYTES` or the threshold in the environment
variable VAE_MMAP_BYTES, or any size with the data-spec option `mmap=1` (`mmap=0` always
loads the data whole). A folder read this way is only indexed up front (each file's header:
size and mode); `ImageFiles` decodes the images of a batch when it is read. Values are
converted exactly as the in-memory path converts them (float32; integer images divided by
255; an image folder's in-memory path decodes through `ImageFiles` too), so a run trains on
the same numbers either way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import TrainerError

DEFAULT_THRESHOLD_BYTES = 1 << 31  # .npy files larger than this (2 GiB) are read in batches
THRESHOLD_ENV = "VAE_MMAP_BYTES"  # environment variable overriding the threshold, in bytes
CHUNK_BYTES = 8 << 20  # a chunk of a full pass (checks, statistics) holds about this much float32


def use_mmap(path: Path, option: str | None, nbytes: int | None = None) -> bool:
    """Whether to read the data at `path` in batches: the spec option `mmap=0|1` decides if
    given, else its size against the threshold: `nbytes` (an image folder's decoded size),
    or the file's size."""
    if option is not None:
        if option not in ("0", "1"):
            raise TrainerError(f"{path}: option mmap={option!r} must be 0 (load whole) or 1 (read in batches)")
        return option == "1"
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    try:
        threshold = int(raw) if raw else DEFAULT_THRESHOLD_BYTES
    except ValueError:
        raise TrainerError(f"{THRESHOLD_ENV}={raw!r} must be a number of bytes, e.g. 1000000000") from None
    return (path.stat().st_size if nbytes is None else nbytes) > threshold


IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError)  # PIL's ways of refusing a file


def image_read_errors() -> tuple[type[BaseException], ...]:
    """IMAGE_READ_ERRORS and PIL's DecompressionBombError (an image of too many pixels)."""
    from PIL import Image

    return (*IMAGE_READ_ERRORS, Image.DecompressionBombError)


class ImageFiles:
    """A folder's images as a read-only uint8 array (N, C, H, W), each file decoded when read.

    Only the file list, the mode and the size are held: `x[i:j]` and `x[sorted_int_array]`
    open, decode, convert (to "L" or "RGB") and, with a size option, resize each image
    (bilinear), as the in-memory path does (it decodes through this class too). An image
    that cannot be decoded, or that changed size since it was indexed, is a TrainerError
    naming the file."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int], resize: bool):
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
        self.files = [Path(f) for f in files]
        self.mode = mode  # every image is converted to this mode
        self.size = (int(size[0]), int(size[1]))  # (H, W)
        self.resize = resize  # the size option: resize images of another size (else refuse them)
        self.shape = (len(self.files), 1 if mode == "L" else 3, *self.size)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.decode(int(key))
        if isinstance(key, slice):
            index = range(*key.indices(len(self)))
        else:
            index = np.asarray(key)
            if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                raise TypeError("ImageFiles supports x[i], x[i:j] and x[integer array]")
        out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        for k, i in enumerate(index):
            out[k] = self.decode(int(i))
        return out

    def decode(self, i: int) -> np.ndarray:
        """Image i as uint8 (C, H, W)."""
        from PIL import Image

        f = self.files[i]
        h, w = self.size
        try:
            with Image.open(f) as im:
                im = im.convert(self.mode)  # reads and decodes the pixels
                if im.size != (w, h):
                    if not self.resize:
                        raise TrainerError(f"{f}: the image is now {im.size[1]}x{im.size[0]} pixels, it was "
                                           f"{h}x{w} when the folder was read: load the data again")
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except TrainerError:
            raise
        except image_read_errors() as e:
            raise TrainerError(f"{f}: cannot read the image ({type(e).__name__})") from None
        return a[None] if self.mode == "L" else np.moveaxis(a, -1, 0)


class MappedRows:
    """Selected rows of an array on disk (np.memmap or a view of one, or ImageFiles), read
    on demand."""

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None, from_255: bool = False,
                 device: torch.device | str = "cpu", name: str = ""):
        self.array = array  # (N_file, *shape) a memory-mapped array or ImageFiles, never read whole
        self.rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)  # (N,) sorted
        self.from_255 = from_255  # integer images: divide by 255 after the float32 conversion
        self.device = torch.device(device)
        self.name = name  # the file, for messages
        self._min_max: tuple[float, float] | None = None

    # -- the tensor-like surface ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, device) -> "MappedRows":
        return self._subset(self.rows, device)

    def subset(self, positions) -> "MappedRows":
        """The rows at `positions` (sorted, e.g. a train/test split) of these rows."""
        return self._subset(self.rows[np.asarray(positions, dtype=np.int64)], self.device)

    def __getitem__(self, key) -> torch.Tensor:
        if not isinstance(key, slice):
            raise TypeError("MappedRows supports slices x[i:j] and index_select(0, idx)")
        return self._read(self.rows[key])

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows at `index` (positions in these rows), in index order: (len(index), *shape)."""
        if dim != 0:
            raise ValueError("MappedRows.index_select reads rows: dim must be 0")
        file_rows = self.rows[index.cpu().numpy()]
        order = np.argsort(file_rows, kind="stable")  # read forward through the file
        batch = self._read(file_rows[order])
        inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(batch.device)
        return batch.index_select(0, inverse)

    def numpy(self) -> np.ndarray:
        """Every selected row in memory, float32 (only for subsets known to be small)."""
        return self._read(self.rows, device="cpu").numpy()

    def min(self) -> torch.Tensor:
        return torch.tensor(self._scan_min_max()[0])

    def max(self) -> torch.Tensor:
        return torch.tensor(self._scan_min_max()[1])

    # -- passes in chunks --------------------------------------------------------------------
    def chunk_rows(self) -> int:
        return max(1, CHUNK_BYTES // (4 * max(1, math.prod(self.array.shape[1:]))))

    def chunks(self, rows_per_chunk: int | None = None):
        """The selected rows in order, as float32 CPU tensors of at most rows_per_chunk rows."""
        step = rows_per_chunk or self.chunk_rows()
        for i in range(0, len(self.rows), step):
            yield self._read(self.rows[i:i + step], device="cpu")

    def check_values(self, integer_images: bool) -> None:
        """One pass: every value finite and, for integer images, within 0..255; raises TrainerError."""
        step = self.chunk_rows()
        for i in range(0, len(self.array), step):
            block = np.asarray(self.array[i:i + step], dtype=np.float32)
            if not np.isfinite(block).all():
                raise TrainerError(f"{self.name}: the data contains NaN or infinite values")
            if integer_images and (block.min() < 0 or block.max() > 255):
                raise TrainerError(f"{self.name}: integer images must have values in 0..255")

    def column_stats(self, max_rows: int = 1024, mean_dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-value mean (D,) (float32, or mean_dtype) and variance (D,) float64 over the rows (1/N, as
        torch.var(unbiased=False)), merged chunk by chunk (Chan et al.), and at most `max_rows`
        evenly spaced rows (R, D), the same rows model.initial_sigma_dec takes from a tensor."""
        D = math.prod(self.array.shape[1:])
        n, mean, m2 = 0, torch.zeros(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
        for chunk in self.chunks():
            c = chunk.reshape(len(chunk), D).double()
            c_mean = c.mean(0)
            c_m2 = (c - c_mean).pow(2).sum(0)
            total = n + len(c)
            delta = c_mean - mean
            m2 = m2 + c_m2 + delta.pow(2) * (n * len(c) / total)
            mean = mean + delta * (len(c) / total)
            n = total
        positions = np.arange(0, len(self.rows), max(1, len(self.rows) // max_rows))[:max_rows]
        sample = self._read(self.rows[positions], device="cpu").reshape(len(positions), D)
        return mean.to(mean_dtype), m2 / max(n, 1), sample

    # -- reading -------------------------------------------------------------------------------
    def _subset(self, rows: np.ndarray, device) -> "MappedRows":
        return MappedRows(self.array, rows, self.from_255, device, self.name)

    def _read(self, file_rows: np.ndarray, device=None) -> torch.Tensor:
        """Rows of the file (sorted ascending for a forward read), converted as in memory."""
        block = np.asarray(self.array[file_rows], dtype=np.float32)
        if self.from_255:
            block = block / 255.0  # float32, exactly as data._finish_array scales in memory
        x = torch.from_numpy(np.ascontiguousarray(block))
        target = self.device if device is None else torch.device(device)
        return x if target.type == "cpu" else x.to(target)

    def _scan_min_max(self) -> tuple[float, float]:
        if self._min_max is None:
            lo, hi = math.inf, -math.inf
            for chunk in self.chunks():
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            self._min_max = (lo, hi)
        return self._min_max


__all__ = ["MappedRows", "ImageFiles", "use_mmap", "DEFAULT_THRESHOLD_BYTES", "THRESHOLD_ENV"]
