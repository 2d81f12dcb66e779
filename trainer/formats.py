"""File formats: reading a user's file or folder into samples, and telling file types apart.

What lives here:
  `LoadedData`       what every reader (and every built-in data set in trainer.data) returns
  `read_path`        a file or folder -> LoadedData, picked by its name: .npz (array x, optional
                     y), .npy, .csv, MNIST-format IDX (raw or .gz) or a folder of PNG/JPEG images
  `IMAGE_SUFFIXES`   the image files a folder (or an upload) may hold
  `parse_idx_header` the one reader of an IDX header (`IDX_TYPES`, rank, sizes), used by the
                     IDX reader here and by the app's upload check (explorer/services/
                     upload_checks.py), with `looks_like_idx` and `is_idx_name`
  `sniff`            what bytes are (zip, npy, gzip, png, ...) from their first bytes

Integer images are scaled to [0, 1]; other numbers are kept in their own units. A .npy larger
than mapped.use_mmap's threshold, or a folder whose images decoded are, stays on disk and
is read a batch at a time (trainer.mapped). Every problem with a file is a `TrainerError`
whose one-line message names the file and what is wrong; nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import gzip
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import TrainerError
from .mapped import ImageFiles, MappedRows, image_read_errors, use_mmap

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_COLUMNS = 1_000_000  # a CSV announcing more columns than this is refused
MAX_CSV_BYTES = 256 << 20  # a larger CSV is refused: its reader holds every cell as text (~10x the file)
MAX_FOLDER_ENTRIES = 2_000_000  # files and folders looked at under an image folder before giving up
CSV_LABEL_COLUMNS = ("label", "y", "class", "target")  # header names taken as the label column
_TEXT_SAMPLE = 1 << 20  # bytes that sniff decodes to tell text from binary


@dataclass
class LoadedData:
    """All the samples of one data set, before the train/test split (trainer.data.split)."""

    x: np.ndarray | MappedRows  # (N, D) or (N, C, H, W) float32; MappedRows: read from disk in batches
    y: np.ndarray | None  # (N, F) float64 labels or known factors, or None
    label_names: list[str] = field(default_factory=list)  # F names, e.g. ["digit"]; a CSV's label header
    is_image: bool = False  # x is (N, C, H, W) with values in [0, 1]
    exact_log_px: Callable[[torch.Tensor], torch.Tensor] | None = None  # the true density per sample, if known
    feature_names: list[str] = field(default_factory=list)  # D names of x's values (non-image data), else []
    class_names: list[str] = field(default_factory=list)  # a label of names: y == i means class_names[i]; else []
    name: str = ""  # the data set's name to show: the file's or folder's own name, or the built-in's

    @property
    def label_name(self) -> str | None:
        """The (first) label's name, e.g. "target", or None without labels."""
        return self.label_names[0] if self.label_names else None


# -- telling file types apart ---------------------------------------------------------------

def sniff(data: bytes) -> str:
    """What the bytes are, from their first bytes: zip, npy, gzip, png, jpeg, idx, pickle,
    text (UTF-8 without NUL bytes) or unknown."""
    head = data[:16]
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if looks_like_idx(head):
        return "idx"
    try:
        data[:_TEXT_SAMPLE].decode("utf-8")
        text = b"\x00" not in data[:_TEXT_SAMPLE]
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the sample is fine
        text = e.start >= min(len(data), _TEXT_SAMPLE) - 3 and b"\x00" not in data[:_TEXT_SAMPLE]
    return "text" if text else "unknown"


# -- the IDX header -------------------------------------------------------------------------
#
# MNIST's IDX format: 2 zero bytes, a type byte, a rank byte, then one big-endian 4-byte
# size per dimension, then the values, big-endian.

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # type byte -> dtype


class IdxHeaderError(ValueError):
    """Bytes that are not an IDX header; `problem` says why, so that each reader words its own
    message: "magic" (not 0, 0), "type" (unknown type byte), "rank" (0 dimensions) or
    "truncated" (fewer sizes than the rank)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header announces."""

    dtype: np.dtype  # the type of the values, big-endian as stored
    dims: tuple[int, ...]  # the array's sizes, e.g. (60000, 28, 28)

    @property
    def size(self) -> int:
        """Bytes of the header itself: 4, and 4 per dimension."""
        return 4 + 4 * len(self.dims)

    @property
    def data_bytes(self) -> int:
        """Bytes of values the header announces after it."""
        return math.prod(self.dims) * self.dtype.itemsize


def _idx_start_problem(head: bytes) -> str | None:
    """What is wrong with the first 4 bytes as an IDX file's (see IdxHeaderError), or None."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        return "magic"
    if head[2] not in IDX_TYPES:
        return "type"
    if head[3] == 0:
        return "rank"
    return None


def is_idx_name(name: str) -> bool:
    """Whether a file name says IDX: MNIST's "train-images-idx3-ubyte", or any name with idx."""
    lower = name.lower()
    return "idx" in lower or lower.endswith("-ubyte")


def looks_like_idx(head: bytes) -> bool:
    """Whether the first 4 bytes are an IDX file's: 0, 0, a known type byte, a rank above 0."""
    return _idx_start_problem(head) is None


def parse_idx_header(head: bytes) -> IdxHeader:
    """The header at the start of `head` (which holds at least its 4 + 4 * rank bytes);
    raises IdxHeaderError."""
    problem = _idx_start_problem(head)
    if problem is None and len(head) < 4 + 4 * head[3]:
        problem = "truncated"
    if problem is not None:
        raise IdxHeaderError(problem)
    rank = head[3]
    return IdxHeader(np.dtype(IDX_TYPES[head[2]]), struct.unpack(f">{rank}I", head[4:4 + 4 * rank]))


# -- one file or folder ---------------------------------------------------------------------

def read_path(path: str, options: dict) -> LoadedData:
    """Read the existing file or folder `path`, picking the format by its name; the options
    a format reads (size, mmap, label) are popped from `options`. Raises TrainerError."""
    p = Path(path)
    loaded = _read(p, path, options)
    loaded.name = p.resolve().name or path  # the file's own name, not the folder it lies in
    return loaded


def _read(p: Path, path: str, options: dict) -> LoadedData:
    """read_path's work: the reader of p's format."""
    if p.is_dir():
        return _load_image_folder(p, options)
    if p.stat().st_size == 0:
        raise TrainerError(f"{path}: the file is empty")
    suffix = p.name.lower()
    if suffix.endswith(".gz"):
        suffix = suffix[:-3]
    names: dict[str, list[str]] = {}
    if suffix.endswith(".npz"):
        x, y, names = _load_npz(p)
    elif suffix.endswith(".npy"):
        x, y = _load_npy(p, options.pop("mmap", None)), None
    elif suffix.endswith(".csv"):
        return _load_csv(p, options)
    elif is_idx_name(suffix):
        x, y = _load_idx_pair(p)
    elif suffix.endswith(IMAGE_SUFFIXES):
        raise TrainerError(f"{path}: a single image is not a data set: give the folder that holds the images")
    else:
        raise TrainerError(f"{path}: unknown file type: use .npz, .npy, .csv, IDX files or a folder of images")
    return _finish_array(p, x, y, names)


def _default_feature_names(d: int) -> list[str]:
    return [f"x{j + 1}" for j in range(d)]


def _finish_array(p: Path, x: np.ndarray, y: np.ndarray | None, names: dict | None = None) -> LoadedData:
    """Check an array of samples, infer image layout, scale integer images to [0, 1].
    names: an .npz's optional string arrays feature_names, label_name, class_names."""
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
    names = names or {}
    label_names = [(names.get("label_name") or ["label"])[0]] if y is not None else []
    features = [] if is_image else names.get("feature_names") or _default_feature_names(math.prod(x.shape[1:]))
    if not is_image and len(features) != math.prod(x.shape[1:]):
        raise TrainerError(f"{p}: {len(features)} feature_names for {math.prod(x.shape[1:])} values per sample")
    if isinstance(x, np.memmap):  # a large .npy (see _load_npy): checked in chunks, read in batches
        rows = MappedRows(x, from_255=integer and is_image, name=str(p))
        rows.check_values(integer_images=integer and is_image)
        y, classes = (None, []) if y is None else _check_labels(p, y, len(rows), names.get("class_names"))
        return LoadedData(rows, y, label_names, is_image, feature_names=features, class_names=classes)
    xf = np.asarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise TrainerError(f"{p}: the data contains NaN or infinite values")
    if integer and is_image:
        if xf.min() < 0 or xf.max() > 255:
            raise TrainerError(f"{p}: integer images must have values in 0..255")
        xf = xf / 255.0
    classes: list[str] = []
    if y is not None:
        y, classes = _check_labels(p, y, len(xf), names.get("class_names"))
    return LoadedData(xf, y, label_names, is_image, feature_names=features, class_names=classes)


def _check_labels(p: Path, y: np.ndarray, n: int, class_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(y (n, F) float64, class names): labels that are names are numbered in sorted order,
    and their names kept (y == i is class_names[i]); numbers keep `class_names` as given."""
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise TrainerError(f"{p}: {len(y) if y.ndim else 0} labels for {n} samples: labels must match the samples one to one")
    classes = list(class_names or [])
    if not np.issubdtype(y.dtype, np.number):
        names, y = np.unique(y.astype(str), return_inverse=True)
        classes = [str(c) for c in names]
    y = y.reshape(n, -1).astype(np.float64)
    if not np.isfinite(y).all():
        raise TrainerError(f"{p}: the labels contain NaN or infinite values")
    return y, classes


# -- .npz and .npy --------------------------------------------------------------------------

def _check_signature(p: Path, kind: str, what: str, writer: str) -> None:
    """Refuse a file whose first bytes are not those of `kind` (sniff's name for the format:
    a text file named .npz), before numpy's reader takes anything unknown for pickled data."""
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
            names = {key: [str(v) for v in np.asarray(f[key]).reshape(-1)]
                     for key in ("feature_names", "label_name", "class_names") if key in f.files}
            return f["x"], (f["y"] if "y" in f.files else None), names
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


# -- .csv -----------------------------------------------------------------------------------

def _load_csv(p: Path, options: dict) -> LoadedData:
    """Numeric columns; a header row is optional; a label column is taken from option
    label=NAME (or column index), or a header column named label, y, class or target."""
    label_opt = options.pop("label", None)
    rows = _read_csv_rows(p)
    header = _find_header(rows)
    body = rows[1:] if header else rows
    if not body:
        raise TrainerError(f"{p}: the CSV has a header but no data rows")
    width = len(rows[0])
    label_col = _find_label_column(p, header, width, label_opt)
    x, labels = _parse_csv_body(p, body, width, label_col, first_line=1 + (header is not None))
    if x.shape[1] == 0:
        raise TrainerError(f"{p}: the CSV has no data columns besides the labels")
    if not np.isfinite(x).all():
        raise TrainerError(f"{p}: the CSV contains NaN or infinite values")
    features = [n for j, n in enumerate(header) if j != label_col] if header else _default_feature_names(x.shape[1])
    if label_col is None:
        return LoadedData(x, None, [], False, feature_names=features)
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:
        y = np.array(labels)  # names, numbered in sorted order by _check_labels
    y, classes = _check_labels(p, y, len(x))
    label_name = header[label_col] if header and header[label_col] else "label"
    return LoadedData(x, y, [label_name], False, feature_names=features, class_names=classes)


def _read_csv_rows(p: Path) -> list[list[str]]:
    """The CSV's non-blank rows as text cells, within the size and width limits."""
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
    return rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _find_header(rows: list[list[str]]) -> list[str] | None:
    """The first row's column names if it is a header (any cell not a number), else None."""
    if all(_is_number(c) for c in rows[0]):
        return None
    return [c.strip() for c in rows[0]]


def _find_label_column(p: Path, header: list[str] | None, width: int, label_opt: str | None) -> int | None:
    """The label column's index: option label=NAME or label=INDEX (negative from the end),
    else the first header column named as in CSV_LABEL_COLUMNS, else None."""
    if label_opt is not None:
        if header and label_opt in header:
            return header.index(label_opt)
        if label_opt.lstrip("-").isdigit() and -width <= int(label_opt) < width:
            return int(label_opt) % width
        raise TrainerError(f"{p}: no column {label_opt!r} to use as labels")
    if header:
        for name in CSV_LABEL_COLUMNS:
            if name in header:
                return header.index(name)
    return None


def _parse_csv_body(p: Path, body: list[list[str]], width: int, label_col: int | None,
                    first_line: int) -> tuple[np.ndarray, list[str]]:
    """(values, labels as text): each row must have `width` numbers (the label cell aside);
    `first_line` is the body's first line number in the file, for messages."""
    x = np.empty((len(body), width - (label_col is not None)), dtype=np.float32)
    labels: list[str] = []
    for i, row in enumerate(body):
        line = first_line + i
        if len(row) != width:
            raise TrainerError(f"{p}: line {line} has {len(row)} values, expected {width} (ragged rows)")
        if label_col is not None:
            labels.append(row[label_col].strip())
            row = row[:label_col] + row[label_col + 1:]
        try:
            x[i] = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not _is_number(c))
            raise TrainerError(f"{p}: line {line} has a non-numeric value {bad[:30]!r}") from None
    return x, labels


# -- IDX ------------------------------------------------------------------------------------

def _read_idx(p: Path) -> np.ndarray:
    """One IDX file (raw or .gz) as an array in native byte order."""
    try:
        raw = gzip.open(p).read() if p.name.endswith(".gz") else p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged .gz stream
        raise TrainerError(f"{p}: cannot read the IDX file ({e})") from None
    try:
        header = parse_idx_header(raw)
    except IdxHeaderError as e:
        if e.problem == "magic":
            raise TrainerError(f"{p}: not an IDX file (bad magic number)") from None
        if e.problem == "type":
            raise TrainerError(f"{p}: unknown IDX data type {raw[2]:#x}") from None
        raise TrainerError(f"{p}: truncated IDX header") from None  # no dimensions, or fewer sizes than the rank
    body = raw[header.size:]
    if len(body) != header.data_bytes:
        raise TrainerError(f"{p}: IDX header promises {header.data_bytes} bytes of data but the file has {len(body)}")
    return np.frombuffer(body, dtype=header.dtype).reshape(header.dims).astype(header.dtype.newbyteorder("="))


def _load_idx_pair(p: Path):
    """The images of an IDX file and, when MNIST's labels file lies beside it, its labels."""
    x = _read_idx(p)
    labels_path = p.with_name(p.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1"))
    y = _read_idx(labels_path) if labels_path != p and labels_path.exists() else None
    return x, y


# -- a folder of images ---------------------------------------------------------------------

def _load_image_folder(folder: Path, options: dict) -> LoadedData:
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
    class_names = classes if y is not None else []  # the subfolders' names, y == i is classes[i]
    if use_mmap(folder, mmap_option, images.nbytes):
        # uint8 by construction: always finite and within 0..255, so no check pass
        return LoadedData(MappedRows(images, from_255=True, name=str(folder)), y, label_names, True,
                          class_names=class_names)
    return LoadedData(images[:].astype(np.float32) / 255.0, y, label_names, True, class_names=class_names)


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


__all__ = ["LoadedData", "read_path", "IMAGE_SUFFIXES", "IDX_TYPES", "IdxHeader", "IdxHeaderError",
           "parse_idx_header", "is_idx_name", "looks_like_idx", "sniff"]
