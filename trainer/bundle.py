"""A run as one file to take away, and back: export, import, and the codes as CSV.

    export_run(run_dir, out)        the run folder's files as one zip, under one folder named
                                    after the run: config.json, model.safetensors, ... (only
                                    JSON, JSON lines and safetensors files; nothing else)
    import_bundle(zip_path, runs_dir) -> Path
                                    a zip checked as an upload, unpacked into runs_dir
    encode_run(run_dir, out_csv)    one row per sample of a split: posterior mean and
                                    log-variance per latent dimension, the labels, the ELBO
                                    terms per sample (and log p(x) with k > 0)

A bundle holds the run, not its data: the run's config.json names the data spec it was
trained on, which must be readable where the run is explored (`eval`, the app).

Importing treats the zip as untrusted: its size and its members' sizes are bounded
(MAX_BUNDLE_BYTES, or the environment variable VAE_MAX_BUNDLE_BYTES), every member is one
plain file of the allowed kinds under the bundle's one folder (no path that leaves it, no
link), JSON files must parse, safetensors files must be safetensors (a pickle renamed
model.safetensors is refused before anything reads it as a checkpoint), and the checkpoint
is loaded against its own config.json as a run folder is (checkpoints.load_model: keys,
shapes, dtypes, finite values). It is unpacked into a hidden temporary folder inside
runs_dir and renamed into place only once all of that passed: a bad bundle raises
`BundleError` (a TrainerError, one line) and leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

from . import fileio, run_names, runs
from .errors import TrainerError

MAX_BUNDLE_BYTES = 1 << 30  # a bundle (the zip, and its members unpacked together) above 1 GiB is refused
BUNDLE_BYTES_ENV = "VAE_MAX_BUNDLE_BYTES"  # environment variable that sets another limit, in bytes
MAX_MEMBERS = 64  # a run folder holds about ten files
SUFFIXES = (".json", ".jsonl", ".safetensors")  # the only kinds of file a bundle holds
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a member's file name, inside the folder
_EXCLUDED = ("optim.safetensors.next",)  # a save in progress is not part of the run


class BundleError(TrainerError):
    """A bundle that cannot be imported (or a run that cannot be exported): one line."""


def max_bundle_bytes() -> int:
    """The size limit: VAE_MAX_BUNDLE_BYTES if set (a positive integer), else MAX_BUNDLE_BYTES."""
    raw = os.environ.get(BUNDLE_BYTES_ENV, "").strip()
    if not raw:
        return MAX_BUNDLE_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise BundleError(f"{BUNDLE_BYTES_ENV}={raw[:20]!r} must be a positive number of bytes")
    return int(raw)


# -- export ---------------------------------------------------------------------------------

def _run_files(run_dir: Path) -> list[Path]:
    """The files of a run folder that a bundle carries, sorted by name."""
    return sorted(p for p in run_dir.iterdir()
                  if p.is_file() and not p.is_symlink() and p.name.endswith(SUFFIXES)
                  and p.name not in _EXCLUDED and _FILE_NAME.fullmatch(p.name))


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run folder `run_dir` as the zip `out` (atomically); returns out. The run must
    have a checkpoint and not be training. Raises BundleError."""
    from .api import load_run

    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir)  # a run that can be opened: config and weights checked
    status = run.status or {}
    if status.get("state") in ("queued", "running"):
        raise BundleError(f"{run_dir}: the run is still training: export it when it is done or cancelled")
    name = run_names.run_name_from(run_dir.resolve().name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in _run_files(run_dir):
            info = zipfile.ZipInfo(f"{name}/{p.name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16  # a plain file
            z.writestr(info, p.read_bytes())
    fileio.atomic_write_bytes(out, buf.getvalue())
    return out


# -- import ---------------------------------------------------------------------------------

def _members(z: zipfile.ZipFile, where: str, limit: int) -> tuple[str, list[zipfile.ZipInfo]]:
    """The bundle's folder name and its members, every name and size checked."""
    infos = [i for i in z.infolist() if not i.is_dir()]
    if not infos:
        raise BundleError(f"{where}: the bundle is empty: export a run with python -m trainer export")
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{where}: the bundle holds {len(infos)} files, more than a run's {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise BundleError(f"{where}: the bundle unpacks to {total:,} bytes, more than the limit of {limit:,}")
    folders = set()
    for i in infos:
        name = i.filename
        parts = name.split("/")
        mode = i.external_attr >> 16
        if ("\\" in name or name.startswith("/") or len(parts) != 2 or parts[0] in ("", ".", "..")
                or not _FILE_NAME.fullmatch(parts[1]) or ".." in parts[1]):
            raise BundleError(f"{where}: member {name[:60]!r} is not a file in the bundle's one folder "
                              "(a name that leaves the folder, or a subfolder): refused")
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # a type given, and not a file
            raise BundleError(f"{where}: member {name[:60]!r} is not a plain file (a link?): refused")
        if not parts[1].endswith(SUFFIXES):
            raise BundleError(f"{where}: member {name[:60]!r} is not JSON or safetensors: a bundle holds "
                              "only those")
        folders.add(parts[0])
    if len(folders) != 1:
        raise BundleError(f"{where}: the bundle holds {len(folders)} folders; a bundle is one run's folder")
    folder = folders.pop()
    try:
        run_names.check_run_name(folder)
    except TrainerError as e:
        raise BundleError(f"{where}: the bundle's folder name: {e}") from None
    names = [i.filename.split("/")[1] for i in infos]
    if len(set(names)) != len(names):
        raise BundleError(f"{where}: the bundle holds the same file twice")
    for needed in ("config.json", "model.safetensors"):
        if needed not in names:
            raise BundleError(f"{where}: the bundle has no {needed}: export a run with python -m trainer export")
    return folder, infos


def _check_content(name: str, data: bytes, where: str) -> None:
    """JSON parses; a safetensors file starts with its 8-byte header length and a JSON header."""
    if name.endswith(".safetensors"):
        n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
        ok = 2 <= n <= len(data) - 8 and data[8:9] == b"{"
        if ok:
            try:
                json.loads(data[8:8 + n])
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            raise BundleError(f"{where}: {name} is not a safetensors file (its first bytes are not that "
                              "format's header): refused, nothing was read from it")
        return
    try:
        text = data.decode("utf-8")
        if name.endswith(".jsonl"):
            for line in text.splitlines():
                if line.strip():
                    json.loads(line)
        else:
            json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{where}: {name} is not valid JSON: refused") from None


def _check_run(folder: Path, where: str) -> None:
    """The unpacked run opens as a run folder does: config, checkpoint against it, the rest."""
    from . import checkpoints

    try:
        cfg = runs.load_config(folder)
        model = checkpoints.load_model(folder, cfg)
        runs.read_data_info(folder)
        if (folder / "optim.safetensors").exists():
            checkpoints.load_optim_state(folder, model)
        if (folder / "train_state.json").exists():
            checkpoints.read_train_state(folder)
        status = runs.read_status_raw(folder)
    except TrainerError as e:
        message = str(e).replace(str(folder), "").lstrip("/: ")
        raise BundleError(f"{where}: the run in the bundle does not check out: {message}") from None
    if status is not None and status.get("state") in ("queued", "running"):
        raise BundleError(f"{where}: the bundle's run was exported while training: export it again when done")


def import_bundle(zip_path: str | Path, runs_dir: str | Path) -> Path:
    """Check the bundle `zip_path` and unpack it into `runs_dir` as the run folder named in it;
    returns that folder. Raises BundleError, leaving runs_dir as it was."""
    zip_path, runs_dir = Path(zip_path), Path(runs_dir)
    where = zip_path.name or str(zip_path)
    if not zip_path.is_file():
        raise BundleError(f"{zip_path}: no such bundle file")
    if not runs_dir.is_dir():
        raise BundleError(f"{runs_dir}: no such runs folder: create it, or give the folder that holds the runs")
    limit = max_bundle_bytes()
    size = zip_path.stat().st_size
    if size > limit:
        raise BundleError(f"{where}: the bundle is {size:,} bytes, more than the limit of {limit:,}")
    with open(zip_path, "rb") as f:
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise BundleError(f"{where}: not a zip file: a bundle is the zip python -m trainer export writes")
    try:
        with zipfile.ZipFile(zip_path) as z:
            folder, infos = _members(z, where, limit)
            target = run_names.safe_run_path(runs_dir, folder)
            if target.exists():
                raise BundleError(f"{where}: {target} already exists: delete or rename that run first, "
                                  "or import into another runs folder")
            contents = {}
            for i in infos:
                with z.open(i) as member:
                    data = member.read(i.file_size + 1)  # never more than the header says
                if len(data) != i.file_size:
                    raise BundleError(f"{where}: member {i.filename[:60]!r} is not the size its header says")
                name = i.filename.split("/")[1]
                _check_content(name, data, where)
                contents[name] = data
    except BundleError:
        raise
    except TrainerError as e:
        raise BundleError(f"{where}: {e}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as e:
        raise BundleError(f"{where}: a damaged zip file ({str(e)[:60]})") from None
    tmp = Path(tempfile.mkdtemp(dir=runs_dir, prefix=".import-"))  # hidden: the app lists no dot folder
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private; a run folder is not
        for name, data in contents.items():
            (tmp / name).write_bytes(data)
        _check_run(tmp, where)
        fileio.fsync_dir(tmp)
        if target.exists():  # another import of the same name finished meanwhile
            raise BundleError(f"{where}: {target} already exists: delete or rename that run first")
        os.rename(tmp, target)
        fileio.fsync_dir(runs_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# -- codes as CSV ---------------------------------------------------------------------------

def encode_run(run_dir: str | Path, out_csv: str | Path, split: str = "test", k: int = 0,
               mc_samples: int = 1, seed: int = 0) -> Path:
    """Write one CSV row per sample of the split (atomically); returns out_csv. Columns:
    sample (its index in the split), mu_1..mu_d and logvar_1..logvar_d (q(z|x)), one column per
    label (named as in the data; a label of names shows the name), then elbo, recon, kl (per
    sample, nats, mc_samples draws of z) and, with k > 0, log_px and log_px_se (K = k)."""
    from .api import load_run
    from .elbo import evaluate

    run = load_run(run_dir)
    data = run.load_data()
    x = data.x_test if split == "test" else data.x_train
    y = data.y_test if split == "test" else data.y_train
    ev = evaluate(run.model, x, mc_samples, seed, batch_size=500, k=k, keep_per_sample=True)
    per = ev.per_sample
    d = run.model.latent_dim
    label_names = list(data.label_names) if y is not None else []
    columns = (["sample"] + [f"mu_{j + 1}" for j in range(d)] + [f"logvar_{j + 1}" for j in range(d)]
               + label_names + ["elbo", "recon", "kl"] + (["log_px", "log_px_se"] if k else []))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    classes = list(data.class_names)
    for i in range(ev.n):
        labels = []
        for f in range(len(label_names)):
            v = float(y[i, f])
            named = f == 0 and classes and v.is_integer() and 0 <= int(v) < len(classes)
            labels.append(classes[int(v)] if named else repr(v))
        row = ([i] + [repr(float(v)) for v in per["mu"][i]] + [repr(float(v)) for v in per["logvar"][i]]
               + labels + [repr(float(per[key][i])) for key in ("elbo", "recon", "kl")])
        if k:
            row += [repr(float(per["log_px"][i])), repr(float(per["log_px_se"][i]))]
        w.writerow(row)
    out_csv = Path(out_csv)
    fileio.atomic_write_bytes(out_csv, buf.getvalue().encode("utf-8"))
    return out_csv


__all__ = ["BundleError", "export_run", "import_bundle", "encode_run", "MAX_BUNDLE_BYTES", "BUNDLE_BYTES_ENV"]
