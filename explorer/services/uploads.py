"""The user's own data: uploaded files saved under <runs folder>/uploads/ and validated
on the server: first by content (upload_checks.py), then by loading them with the trainer's
own reader (never unpickled).

One uploaded file (.npz with array x and optional y, .npy, .csv, MNIST-style IDX, .gz of
those) is saved as it is; several PNG/JPEG images are saved into one folder, and a .zip of
images is unpacked into one: a zip of one folder per class (cat/1.png, dog/7.png, or the
same inside one top folder) gives the images those classes as labels. The trainer reads
such a folder as an image data set. A file that does not load is deleted again and the
trainer's one-line message is raised as TrainerError.

One upload is one data set: the same content (by SHA-256 over its files' names and bytes)
uploaded again reuses the stored copy (uploads/.index.json records each upload's hash),
and `delete_upload` removes one, refused while a run was trained on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trainer import TrainerError, load_dataset
from trainer.fileio import atomic_write_json
from trainer.formats import IMAGE_SUFFIXES

from .runs import UPLOADS
from .upload_checks import UploadLimits, extract_images_zip, validate_upload

MAX_UPLOAD_MB = 200  # also .streamlit/config.toml server.maxUploadSize
# Checked by content before anything is saved (upload_checks.py): sizes, archives (zip bombs,
# escaping paths), image dimensions, CSV width.
UPLOAD_LIMITS = UploadLimits(max_bytes=MAX_UPLOAD_MB * 2**20)
DATA_SUFFIXES = (".npz", ".npy", ".csv", ".gz", ".idx", "-ubyte")
INDEX = ".index.json"  # in uploads/: {name: {"sha256": ..., "bytes": ...}}


@dataclass
class UploadedData:
    spec: str  # the data spec to train on: the saved file's absolute path
    name: str  # shown to the user
    n_samples: int
    shape: tuple[int, ...]  # one sample
    is_image: bool
    label_names: list[str]
    reused: bool = False  # the same content was stored already: that copy is the data set


@dataclass
class StoredUpload:
    """One saved upload, as the list on the Train page shows it."""

    name: str
    path: Path
    bytes: int  # on disk (a folder: all its files)
    used_by: list[str] = field(default_factory=list)  # runs trained (or training) on it


def safe_filename(name: str) -> str:
    """A plain file name from whatever the browser sent (no folders, no odd characters)."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-100:]


def _free(path: Path) -> Path:
    stem, suffix, i = path.name, "", 2
    for s in (".npz", ".npy", ".csv", ".gz"):
        if path.name.lower().endswith(s):
            stem, suffix = path.name[: -len(s)], path.name[-len(s):]
            break
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{stem}-{i}{suffix}")
        i += 1
    return candidate


def content_hash(files: list[tuple[str, bytes]]) -> str:
    """SHA-256 of an upload: its files' names and bytes, in name order (the order they were
    picked in does not matter)."""
    h = hashlib.sha256()
    for name, digest in sorted((safe_filename(n), hashlib.sha256(bytes(d)).hexdigest()) for n, d in files):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def distinct_files(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The upload without repeats: a file picked twice (same name, same bytes) counts once."""
    seen, out = set(), []
    for name, data in files:
        key = (safe_filename(name), hashlib.sha256(bytes(data)).digest())
        if key not in seen:
            seen.add(key)
            out.append((name, data))
    return out


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in index.items() if isinstance(v, dict) and (folder / k).exists()} \
        if isinstance(index, dict) else {}


def _write_index(folder: Path, index: dict) -> None:
    try:
        atomic_write_json(folder / INDEX, index)
    except OSError:
        pass  # without the index an upload is only stored again, never lost


def _describe(target: Path, reused: bool = False) -> UploadedData:
    data = load_dataset(str(target), 0)
    n = len(data.x_train) + len(data.x_test)
    return UploadedData(str(target), target.name, n, data.shape, data.is_image, data.label_names, reused)


def save_upload(root: Path, files: list[tuple[str, bytes]]) -> UploadedData:
    """Save uploaded (filename, content) pairs under root/uploads and check that they load;
    the same content uploaded before is not stored again (UploadedData.reused).

    Raises TrainerError with a one-line message for anything that is not a data set."""
    if not files:
        raise TrainerError("no file was uploaded")
    files = distinct_files(files)
    digest = content_hash(files)
    folder = Path(root) / UPLOADS
    index = _read_index(folder)
    for name, entry in index.items():
        if entry.get("sha256") == digest:
            try:
                described = _describe(folder / name, reused=True)
            except Exception:  # noqa: BLE001 - a damaged stored copy is stored again below
                break
            if not entry.get("shared"):  # uploaded again (by another session, perhaps): keep it
                index[name] = {**entry, "shared": True}
                _write_index(folder, index)
            return described
    total = sum(len(data) for _, data in files)
    if total > MAX_UPLOAD_MB * 1024 * 1024:
        raise TrainerError(f"the upload is {total / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    names = [safe_filename(n) for n, _ in files]
    kinds = validate_upload([(n, data) for n, (_, data) in zip(names, files)], UPLOAD_LIMITS)
    folder = Path(root) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    all_images = all(n.lower().endswith(IMAGE_SUFFIXES) for n in names)
    if len(files) > 1 and not all_images:
        raise TrainerError("upload one data file (.npz, .npy, .csv, IDX) or several PNG/JPEG images, not a mix")
    if all_images:
        if len(files) < 2:
            raise TrainerError("a single image is not a data set: upload several images at once")
        target = _free(folder / (Path(names[0]).stem + "-images"))
        target.mkdir()
        for i, (name, (_, data)) in enumerate(zip(names, files)):
            (target / f"{i:06d}-{name}").write_bytes(data)
    elif kinds[0] == "images.zip":  # a .zip of images, unpacked safely into a folder
        target = _free(folder / (Path(names[0]).stem + "-images"))
        try:
            extract_images_zip(names[0], files[0][1], target, UPLOAD_LIMITS)
        except TrainerError:
            _remove(target)
            raise
    else:
        name = names[0]
        if not name.lower().endswith(DATA_SUFFIXES) and "idx" not in name.lower():
            raise TrainerError(f"{name}: unknown file type: upload .npz, .npy, .csv, IDX files or PNG/JPEG images")
        target = _free(folder / name)
        target.write_bytes(files[0][1])
    try:
        saved = _describe(target)
    except TrainerError as e:
        _remove(target)
        raise TrainerError(str(e).replace(str(target), target.name.split("-images")[0])) from None
    except Exception as e:  # any reader failure on a user's bytes is a bad file, not a crash
        _remove(target)
        raise TrainerError(f"{target.name}: cannot be read as a data set ({type(e).__name__})") from None
    index = _read_index(folder)
    index[target.name] = {"sha256": digest, "bytes": _size(target)}
    _write_index(folder, index)
    return saved


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def runs_using(root: Path, upload: Path) -> list[str]:
    """The runs in `root` whose data set is `upload` (with any options), by name."""
    from .runs import list_runs

    upload = Path(upload).resolve()
    used = []
    for s in list_runs(root):
        spec = s.config.data if s.config is not None else ""
        base = spec.split(":", 1)[0] if not Path(spec).exists() else spec
        if base and Path(base).expanduser().resolve() == upload:
            used.append(s.name)
    return used


def stored_uploads(root: Path) -> list[StoredUpload]:
    """Every saved upload with its size on disk and the runs that use it, newest first."""
    return [StoredUpload(p.name, p, _size(p), runs_using(root, p)) for p in list_uploads(root)]


def delete_upload(root: Path, name: str) -> None:
    """Delete the saved upload `name`; refused (TrainerError) while a run uses it."""
    folder = (Path(root) / UPLOADS).resolve()
    path = folder / safe_filename(name)
    if path.name != name or not path.exists() or path.name.startswith("."):
        raise TrainerError(f"there is no upload named {name!r}")
    used = runs_using(root, path)
    if used:
        raise TrainerError(f"{name} is the data set of {', '.join(used)}: delete "
                           f"{'that run' if len(used) == 1 else 'those runs'} on the Runs page first")
    _remove(path)
    index = _read_index(folder)
    if name in index:
        del index[name]
        _write_index(folder, index)


def discard_replaced(root: Path, name: str) -> bool:
    """A session's upload `name`, replaced by its next upload: deleted unless it was uploaded
    again since it was saved (the same content from another session, which may be about to
    train on it) or a run uses it. True if it was deleted."""
    if _read_index(Path(root) / UPLOADS).get(name, {}).get("shared"):
        return False
    try:
        delete_upload(root, name)
    except TrainerError:
        return False  # a run uses it by now, or it is gone: keep it as it is
    return True


def list_uploads(root: Path) -> list[Path]:
    """Saved uploads, newest first."""
    folder = Path(root) / UPLOADS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
