"""The user's own data: uploaded files saved under <runs folder>/uploads/ and validated
on the server: first by content (upload_checks.py), then by loading them with the trainer's
own reader (never unpickled).

One uploaded file (.npz with array x and optional y, .npy, .csv, MNIST-style IDX, .gz of
those) is saved as it is; several PNG/JPEG images are saved into one folder, which the
trainer reads as an image data set. A file that does not load is deleted again and the
trainer's one-line message is raised as TrainerError.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainer import TrainerError, load_dataset
from trainer.formats import IMAGE_SUFFIXES

from .runs import UPLOADS
from .upload_checks import UploadLimits, extract_images_zip, validate_upload

MAX_UPLOAD_MB = 200  # also .streamlit/config.toml server.maxUploadSize
# Checked by content before anything is saved (upload_checks.py): sizes, archives (zip bombs,
# escaping paths), image dimensions, CSV width.
UPLOAD_LIMITS = UploadLimits(max_bytes=MAX_UPLOAD_MB * 2**20)
DATA_SUFFIXES = (".npz", ".npy", ".csv", ".gz", ".idx", "-ubyte")


@dataclass
class UploadedData:
    spec: str  # the data spec to train on: the saved file's absolute path
    name: str  # shown to the user
    n_samples: int
    shape: tuple[int, ...]  # one sample
    is_image: bool
    label_names: list[str]


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


def save_upload(root: Path, files: list[tuple[str, bytes]]) -> UploadedData:
    """Save uploaded (filename, content) pairs under root/uploads and check that they load.

    Raises TrainerError with a one-line message for anything that is not a data set."""
    if not files:
        raise TrainerError("no file was uploaded")
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
        data = load_dataset(str(target), 0)
    except TrainerError as e:
        _remove(target)
        raise TrainerError(str(e).replace(str(target), target.name.split("-images")[0])) from None
    except Exception as e:  # any reader failure on a user's bytes is a bad file, not a crash
        _remove(target)
        raise TrainerError(f"{target.name}: cannot be read as a data set ({type(e).__name__})") from None
    n = len(data.x_train) + len(data.x_test)
    return UploadedData(str(target), target.name, n, data.shape, data.is_image, data.label_names)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def list_uploads(root: Path) -> list[Path]:
    """Saved uploads, newest first."""
    folder = Path(root) / UPLOADS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
