"""Upload checks: a file sent to the app is checked by its *content* before anything is saved.

The bytes must be what the name says (a .npz must be a zip of .npy arrays, a .png a PNG, a
.csv UTF-8 text, ...; trainer.formats.sniff tells them apart), and nothing may unpack to
more than the limits of `UploadLimits`: archives (.zip of images, .npz, .gz) are measured by
decompressing them as a stream and stopping at the limit, never by trusting the sizes their
headers announce. Each check raises TrainerError with one line naming the file and what to
do. `validate_upload` checks one whole upload; `extract_images_zip` unpacks a checked .zip
of images. The upload service (uploads.py) then loads the data with the trainer's own
reader (trainer.data.load_dataset).
"""

from __future__ import annotations

import gzip
import io
import math
import stat as stat_mod
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

from trainer.errors import TrainerError
from trainer.formats import IMAGE_SUFFIXES, IdxHeaderError, is_idx_name, looks_like_idx, parse_idx_header, sniff


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload may hold; uploads.py sets max_bytes from the app's upload limit."""

    max_bytes: int = 200 * 2**20  # one upload as sent (Streamlit's server.maxUploadSize, MB)
    max_unpacked_bytes: int = 1 * 2**30  # an archive (.zip, .npz, .gz) once unpacked
    max_files: int = 20_000  # members of a .zip, or images in one upload
    max_member_bytes: int = 64 * 2**20  # one image file inside a .zip
    max_image_pixels: int = 4096 * 4096  # one image (width x height)
    max_total_values: int = 1 << 27  # all images together, pixels x channels (512 MB as float32)
    max_csv_columns: int = 100_000  # values in the first line of a CSV
    max_csv_cells: int = 50_000_000  # values in a whole CSV


DEFAULT_LIMITS = UploadLimits()
_CHUNK = 1 << 20  # bytes read at a time from a decompressing stream

# what each file name may hold, by content (see expected_kind)
_KINDS = {".npz": "zip", ".npy": "npy", ".csv": "text", ".gz": "gzip", ".zip": "zip",
          **{suffix: "image" for suffix in IMAGE_SUFFIXES}}

_DESCRIBE = {"zip": "a zip archive", "npy": "a .npy array", "gzip": "a gzip file", "png": "a PNG image",
             "jpeg": "a JPEG image", "idx": "an IDX file", "pickle": "a Python pickle", "text": "text",
             "unknown": "not a file type this app reads"}  # sniff's kinds, as messages say them


def _upload_error(name: str, problem: str, hint: str = "") -> TrainerError:
    return TrainerError(f"{name}: {problem}" + (f": {hint}" if hint else ""))


def expected_kind(name: str) -> str | None:
    """The content a file name promises (zip, npy, text, gzip, image, idx), or None."""
    lower = name.lower()
    for suffix, kind in _KINDS.items():
        if lower.endswith(suffix):
            return kind
    if is_idx_name(lower):
        return "idx"
    return None


def check_upload(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> str:
    """Check one uploaded file by its content; returns its kind (npz, npy, csv, idx, idx.gz,
    image or images.zip). Raises TrainerError saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TrainerError(f"{name}: the upload is not a file")
    data = bytes(data)
    if len(data) == 0:
        raise _upload_error(name, "the file is empty (0 bytes)", "upload the file again")
    if len(data) > limits.max_bytes:
        raise _upload_error(name, f"the file is {len(data) / 2**20:.1f} MB, more than the limit of "
                                  f"{limits.max_bytes / 2**20:.0f} MB", "upload a smaller file")
    want = expected_kind(name)
    if want is None:
        raise _upload_error(name, "unknown file type",
                            "upload .npz, .npy, .csv, IDX (.gz), PNG/JPEG images or a .zip of images")
    got = sniff(data)
    matches = {"zip": got == "zip", "npy": got == "npy", "text": got == "text", "gzip": got == "gzip",
               "image": got in ("png", "jpeg"), "idx": got == "idx"}[want]
    if not matches:
        raise _upload_error(name, f"the name says {want} but the content is {_DESCRIBE[got]}",
                            "check that you chose the right file")
    lower = name.lower()
    if want == "zip" and lower.endswith(".npz"):
        check_npz(name, data, limits)
        return "npz"
    if want == "zip":
        check_images_zip(name, data, limits)
        return "images.zip"
    if want == "npy":
        check_npy(name, io.BytesIO(data), len(data), limits)
        return "npy"
    if want == "text":
        check_csv(name, data, limits)
        return "csv"
    if want == "gzip":
        check_gzipped_idx(name, data, limits)
        return "idx.gz"
    if want == "idx":
        check_idx(name, data, limits)
        return "idx"
    check_image(name, data, limits)
    return "image"


# -- the formats ----------------------------------------------------------------------------

def check_npy(name: str, f, size: int | None, limits: UploadLimits = DEFAULT_LIMITS) -> tuple[tuple, "object"]:
    """A .npy header: version, shape, dtype (plain numbers only, never objects, which would
    need pickle) and a data size within the limits and, when `size` is known, equal to
    what the header announces. Returns (shape, dtype)."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"version {version}")
    except Exception as e:  # noqa: BLE001 - numpy parses the header text with ast/tokenize (no code runs): any failure is a bad file
        raise _upload_error(name, f"not a readable .npy array ({type(e).__name__})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise _upload_error(name, f"the array holds {dtype} values, not plain numbers",
                            "save numeric arrays (np.save with a float or integer dtype)")
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > limits.max_unpacked_bytes:
        raise _upload_error(name, f"the array announces {nbytes / 2**20:,.0f} MB of data, more than the limit of "
                                  f"{limits.max_unpacked_bytes / 2**20:,.0f} MB")
    if size is not None and hasattr(f, "tell") and size - f.tell() != nbytes:
        raise _upload_error(name, f"the array header announces {nbytes} bytes of data but the file has "
                                  f"{size - f.tell()}", "the file is truncated or damaged")
    return tuple(shape), dtype


def _safe_member(name: str, info: zipfile.ZipInfo) -> str:
    """The member's path, checked: relative, no '..', no drive, no symlink; '/' separated."""
    path = info.filename.replace("\\", "/")
    parts = path.split("/")
    mode = info.external_attr >> 16
    if path.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts \
            or any(c in path for c in "\x00") or any(ord(c) < 32 for c in path):
        raise _upload_error(name, f"the archive holds a path that escapes its folder ({path[:60]!r})",
                            "make the archive from a plain folder")
    if stat_mod.S_ISLNK(mode):
        raise _upload_error(name, f"the archive holds a symbolic link ({path[:60]!r})", "archive plain files only")
    return path


def _zip_members(name: str, data: bytes, limits: UploadLimits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise _upload_error(name, f"not a readable zip archive ({str(e)[:60]})") from None
    if len(infos) > limits.max_files:
        raise _upload_error(name, f"the archive holds {len(infos):,} entries, more than the limit of {limits.max_files:,}")
    for info in infos:
        _safe_member(name, info)
        if info.flag_bits & 0x1:
            raise _upload_error(name, "the archive is encrypted", "upload an archive without a password")
    return zf, infos


class _TooBig(Exception):
    """More bytes came out of a decompressing stream than allowed."""


def _read_limited(f, limit: int, keep: bool = True) -> tuple[bytes, int]:
    """Read stream `f` to its end in chunks, raising _TooBig as soon as more than `limit`
    bytes came out (what an archive's header claims is never trusted). Returns (the bytes,
    or b"" when keep is False, and their count)."""
    out, n = io.BytesIO(), 0
    while True:
        chunk = f.read(min(_CHUNK, limit - n + 1))
        if not chunk:
            return out.getvalue(), n
        n += len(chunk)
        if n > limit:
            raise _TooBig()
        if keep:
            out.write(chunk)


_STREAM_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError, RuntimeError)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def check_npz(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> None:
    """A .npz: a zip whose members are .npy arrays of plain numbers, one named x. Each array
    is read as a stream: its header first (shape and dtype within the limits), then exactly
    the bytes the header announces, never more."""
    zf, infos = _zip_members(name, data, limits)
    members = [i.filename for i in infos]
    if "x.npy" not in members:
        raise _upload_error(name, f"the .npz has no array named 'x' (it has: {', '.join(members)[:80] or 'none'})",
                            "save it with np.savez(file, x=..., y=...)")
    left = limits.max_unpacked_bytes
    for info in infos:
        array = f"{name}[{info.filename[:-4][:40]}]"
        if not info.filename.endswith(".npy"):
            raise _upload_error(name, f"the .npz holds {info.filename[:60]!r}, which is not an array")
        try:
            with zf.open(info) as f:
                shape, dtype = check_npy(array, f, None, limits)
                announced = math.prod(shape) * dtype.itemsize
                if announced > left:
                    raise _upload_error(name, f"the arrays unpack to more than {_mb(limits.max_unpacked_bytes)}")
                _, got = _read_limited(f, announced, keep=False)
        except _TooBig:
            raise _upload_error(array, "the array holds more data than its header announces (a zip bomb?)") from None
        except _STREAM_ERRORS as e:
            raise _upload_error(array, f"the archive member is damaged ({str(e)[:60]})") from None
        if got != announced:
            raise _upload_error(array, f"the array header announces {announced} bytes of data but the file has {got}",
                                "the file is truncated or damaged")
        left -= got


def _read_image_member(name: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    try:
        with zf.open(info) as f:
            return _read_limited(f, limit)[0]
    except _TooBig:
        raise _upload_error(name, f"the archive member {info.filename[:60]!r} unpacks to more than {_mb(limit)} "
                                  "(a zip bomb?)", "upload a smaller archive") from None
    except _STREAM_ERRORS as e:
        raise _upload_error(name, f"the archive member {info.filename[:60]!r} is damaged ({str(e)[:60]})") from None


def check_images_zip(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> list[str]:
    """A .zip of PNG/JPEG images (sub-folders become labels): every member an image within
    the limits, all of them together too. Returns the image members' names."""
    zf, infos = _zip_members(name, data, limits)
    images = [i for i in infos if not i.is_dir() and _is_image_member(i.filename)]
    if not images:
        raise _upload_error(name, "the archive holds no PNG or JPEG images", "zip a folder of images")
    others = [i.filename for i in infos if not i.is_dir() and not _is_image_member(i.filename) and not _ignorable(i.filename)]
    if others:
        raise _upload_error(name, f"the archive holds files that are not images ({others[0][:60]!r})",
                            "zip a folder that holds only PNG/JPEG images")
    images_zip_prefix(name, [i.filename for i in images])
    left, values = limits.max_unpacked_bytes, 0
    for info in images:
        raw = _read_image_member(name, zf, info, min(limits.max_member_bytes, left))
        left -= len(raw)
        values += check_image(f"{name}[{info.filename[:60]}]", raw, limits)
        if values > limits.max_total_values:
            raise _upload_error(name, f"the images hold more than {limits.max_total_values:,} values in all",
                                "upload fewer or smaller images")
    return [i.filename for i in images]


def _parts(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def images_zip_prefix(name: str, members: list[str]) -> str:
    """How a .zip of images is laid out: images side by side, or one folder per class
    (cat/1.png, dog/7.png: the folder names become labels), either of them possibly inside
    one top folder, which is dropped. Returns that top folder ('' if none); raises
    TrainerError when some images lie in class folders and others do not."""
    parts = [_parts(m) for m in members]
    prefix = ""
    if len({p[0] for p in parts}) == 1 and all(len(p) > 1 for p in parts):
        prefix = parts[0][0]
        parts = [p[1:] for p in parts]
    loose = [p for p in parts if len(p) == 1]
    if loose and len(loose) < len(parts):
        raise _upload_error(name, f"some images are in class folders and some are not (e.g. {loose[0][0][:60]!r})",
                            "put every image in the folder of its class")
    return prefix


def _is_image_member(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES) and not _ignorable(path)


def _ignorable(path: str) -> bool:
    """Files archivers add (macOS resource forks, .DS_Store, Thumbs.db): skipped."""
    parts = path.replace("\\", "/").split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith(".") or parts[-1] in ("Thumbs.db", "desktop.ini")


def extract_images_zip(name: str, data: bytes, target: Path, limits: UploadLimits = DEFAULT_LIMITS) -> int:
    """Unpack a checked .zip of images into the new folder `target`, keeping sub-folders (they
    become labels) but never leaving `target`; returns the number of images written."""
    members = check_images_zip(name, data, limits)
    prefix = images_zip_prefix(name, members)
    members = set(members)
    zf, infos = _zip_members(name, data, limits)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=False)
    root = target.resolve()
    n = 0
    for info in infos:
        if info.filename not in members:
            continue
        parts = _parts(_safe_member(name, info))
        dest = root.joinpath(*(parts[1:] if prefix else parts))  # the top folder dropped
        if root not in dest.resolve().parents:
            raise _upload_error(name, f"the archive holds a path that escapes its folder ({info.filename[:60]!r})")
        raw = _read_image_member(name, zf, info, limits.max_member_bytes)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "xb") as out:  # "x": a path listed twice is an error, not an overwrite
                out.write(raw)
        except FileExistsError:
            raise _upload_error(name, f"the archive holds {info.filename[:60]!r} twice") from None
        except OSError as e:
            raise _upload_error(name, f"cannot unpack {info.filename[:60]!r} ({e.strerror or e})") from None
        n += 1
    return n


def check_image(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> int:
    """A PNG or JPEG whose header is sane and whose size is within the limits (checked before
    any pixel is decoded: no decompression bomb). Returns its number of values (pixels x
    channels)."""
    from PIL import Image, UnidentifiedImageError

    if sniff(data) not in ("png", "jpeg"):
        raise _upload_error(name, f"not a PNG or JPEG image (the content is {_DESCRIBE[sniff(data)]})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            bands = len(im.getbands())
            fmt = im.format
            if width * height > limits.max_image_pixels:
                raise _upload_error(name, f"the image is {width}x{height} pixels, more than the limit of "
                                          f"{limits.max_image_pixels:,} pixels", "resize it first")
            im.verify()  # checksums and structure, without decoding the pixels
    except TrainerError:
        raise
    except Image.DecompressionBombError:
        raise _upload_error(name, "the image has far too many pixels (a decompression bomb?)", "resize it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct_error, ZeroDivisionError,
            IndexError, TypeError) as e:
        raise _upload_error(name, f"the image cannot be read ({type(e).__name__})") from None
    if fmt not in ("PNG", "JPEG", "MPO"):  # MPO: the JPEG of many cameras
        raise _upload_error(name, f"the image is {fmt}, not PNG or JPEG")
    return width * height * bands


def check_gzipped_idx(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """A .gz holding an IDX file, read as a stream: the IDX header first (its sizes within
    the limits), then exactly the bytes it announces, never more. Returns the sizes."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            head = f.read(4)
            if looks_like_idx(head):
                head += f.read(4 * head[3])  # the sizes, one per dimension
            dims, announced = _idx_header(name, head, limits)
            _, got = _read_limited(f, announced, keep=False)
    except TrainerError:
        raise
    except _TooBig:
        raise _upload_error(name, "the file holds more data than its IDX header announces (a gzip bomb?)") from None
    except _STREAM_ERRORS as e:
        raise _upload_error(name, f"not a readable gzip file ({str(e)[:60]})") from None
    if got != announced:
        raise _upload_error(name, f"the IDX header announces {announced:,} bytes of data but the file has {got:,}",
                            "the file is truncated or damaged")
    return dims


def _idx_header(name: str, head: bytes, limits: UploadLimits) -> tuple[tuple[int, ...], int]:
    """(sizes, bytes of data announced) from the first 4 + 4 * rank bytes of an IDX file."""
    try:
        header = parse_idx_header(head)
    except IdxHeaderError as e:
        if e.problem == "truncated":
            raise _upload_error(name, "truncated IDX header") from None
        what = _DESCRIBE[sniff(head)] if head else "empty"
        raise _upload_error(name, f"not an IDX file (bad magic number; the content is {what})") from None
    announced = header.data_bytes
    if announced > limits.max_unpacked_bytes:
        raise _upload_error(name, f"the IDX header announces {_mb(announced)} of data, more than the limit of "
                                  f"{_mb(limits.max_unpacked_bytes)}")
    return header.dims, announced


def check_idx(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """MNIST's IDX format: 0, 0, a type byte, a rank byte, big-endian sizes, then exactly
    the data those sizes announce. Returns the sizes."""
    rank = data[3] if len(data) >= 4 else 0
    dims, announced = _idx_header(name, data[:4 + 4 * rank], limits)
    have = len(data) - 4 - 4 * rank
    if announced != have:
        raise _upload_error(name, f"the IDX header announces {announced:,} bytes of data but the file has {have:,}",
                            "the file is truncated or damaged")
    return dims


def check_csv(name: str, data: bytes, limits: UploadLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """A CSV as UTF-8 text whose width and size are within the limits, measured on the raw
    bytes before any row is split into values. Returns (rows, columns of the first line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _upload_error(name, "not a text CSV file (it is not UTF-8)", "save it as UTF-8 CSV") from None
    if "\x00" in text:
        raise _upload_error(name, "not a text CSV file (it holds NUL bytes)")
    first_end = text.find("\n")
    first = text if first_end < 0 else text[:first_end]
    columns = first.count(",") + 1
    if columns > limits.max_csv_columns:
        raise _upload_error(name, f"the first line has {columns:,} columns, more than the limit of "
                                  f"{limits.max_csv_columns:,}", "upload fewer columns")
    cells = text.count(",") + text.count("\n") + 1
    if cells > limits.max_csv_cells:
        raise _upload_error(name, f"the CSV holds about {cells:,} values, more than the limit of "
                                  f"{limits.max_csv_cells:,}", "upload fewer rows or columns")
    if not text.strip():
        raise _upload_error(name, "the CSV has no rows")
    return text.count("\n") + 1, columns


def validate_upload(files: list[tuple[str, bytes]], limits: UploadLimits = DEFAULT_LIMITS) -> list[str]:
    """Check what one upload holds: a single data file, or several PNG/JPEG images (each
    checked, together within the limits). Returns the kind of each file (see check_upload)."""
    if not files:
        raise TrainerError("no file was uploaded")
    if len(files) > limits.max_files:
        raise TrainerError(f"{len(files):,} files were uploaded, more than the limit of {limits.max_files:,}")
    total = sum(len(data) for _, data in files)
    if total > limits.max_bytes:
        raise TrainerError(f"the upload is {total / 2**20:.1f} MB, more than the limit of "
                           f"{limits.max_bytes / 2**20:.0f} MB: upload less at once")
    kinds = [check_upload(name, data, limits) for name, data in files]
    if len(files) > 1:
        if any(k != "image" for k in kinds):
            raise TrainerError("upload one data file (.npz, .npy, .csv, IDX, .zip of images) or several "
                               "PNG/JPEG images, not a mix")
        values = sum(check_image(name, data, limits) for name, data in files)
        if values > limits.max_total_values:
            raise TrainerError(f"the images hold more than {limits.max_total_values:,} values in all: "
                               "upload fewer or smaller images")
    return kinds


__all__ = ["UploadLimits", "DEFAULT_LIMITS", "expected_kind", "check_upload", "validate_upload", "check_npy", "check_npz", "check_images_zip",
           "images_zip_prefix", "extract_images_zip", "check_image", "check_gzipped_idx", "check_idx", "check_csv"]
