"""Files that a crash never leaves half-written, and JSON read back with one-line errors.

    atomic_write_bytes / atomic_write_json   temp file in the same folder, fsync, rename
    append_jsonl                             one line appended and fsynced (metrics.jsonl)
    read_json                                a small JSON file, or a TrainerError naming it
    fsync_dir                                make the renames in a folder durable

Every write goes to a temp file in the same folder, is fsynced, then renamed over the
target, so a crash (kill -9, a full disk) leaves the old file or the new one, never a part.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import TrainerError

MAX_JSON_BYTES = 10 * 2**20  # config.json, train_state.json, status.json are tiny; refuse huge ones


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename.
    On any failure (disk full, read-only folder) the temp file is removed and the old file
    at `path` is untouched; the OSError propagates.

    durable=False leaves out the two fsyncs: the file is still replaced atomically (a killed
    process leaves the old or the new file, never a part), but a power cut may lose it until
    a later fsync (see checkpoints.sync_checkpoint)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # name the file we meant to write, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    if durable:
        fsync_dir(path.parent)


def remove_temp_files(folder: Path, names) -> list[str]:
    """Remove the temp files that atomic writes of `names` (file names in `folder`) left
    behind when their process was killed mid-write (kill -9, a power cut): `.NAME.*.tmp`.
    Only for a folder whose writer is known to be dead (a run folder held under its lock);
    returns the names removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass
    return removed


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (best effort: not every file system allows it)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode(), durable)


def append_jsonl(path: Path, obj: Any, durable: bool = True) -> None:
    """Append one line and fsync. A crash can at worst cut the last line, which readers
    skip; the next append then starts on a fresh line so that it is not glued to it.
    durable=False leaves out the fsync (a later durable append or sync makes it durable)."""
    line = (json.dumps(obj, allow_nan=True) + "\n").encode()
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON in `path` (at most MAX_JSON_BYTES); TrainerError naming the file and
    `what` it should have been when it is missing, unreadable, too large or not JSON."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise TrainerError(f"{path}: missing {what}") from None
    except OSError as e:
        raise TrainerError(f"{path}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise TrainerError(f"{path}: {what} is larger than {MAX_JSON_BYTES // 2**20} MB: it is not a file this program wrote")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TrainerError(f"{path}: {what} is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise TrainerError(f"{path}: {what} is not valid JSON") from None
