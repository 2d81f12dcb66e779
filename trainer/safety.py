"""Guards for what a user can type or upload: run names, and (see below) uploaded files.

Run names. The app trains into `<runs folder>/<name>`; a name is one plain folder name,
never a path. `safe_run_path(runs_dir, name)` refuses anything else with a TrainerError
(so nothing is ever written outside the runs folder):

    ..  /  \\  an absolute path  NUL or control characters  a leading dot  > 100 characters
    a name whose folder is a symlink leading out of the runs folder
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from .errors import TrainerError

MAX_RUN_NAME = 100  # characters
RUN_NAME_HELP = "use letters, digits, '-', '_' and '.' (up to 100 characters, no folders)"


def check_run_name(name: object) -> str:
    """`name` if it is one plain folder name; otherwise TrainerError saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise TrainerError(f"the run name is empty: {RUN_NAME_HELP}")
    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
        raise TrainerError(f"the run name {shown} contains control or invisible characters: {RUN_NAME_HELP}")
    if len(name) > MAX_RUN_NAME:
        raise TrainerError(f"the run name is {len(name)} characters long, more than {MAX_RUN_NAME}: {RUN_NAME_HELP}")
    if "/" in name or "\\" in name:
        raise TrainerError(f"the run name {shown} contains a folder separator: {RUN_NAME_HELP}")
    if ".." in name or name.startswith("."):
        raise TrainerError(f"the run name {shown} starts with a dot or contains '..': {RUN_NAME_HELP}")
    if name != name.strip():
        raise TrainerError(f"the run name {shown} starts or ends with a space: {RUN_NAME_HELP}")
    if not all(c.isalnum() or c in "-_." for c in name):
        bad = next(c for c in name if not (c.isalnum() or c in "-_."))
        raise TrainerError(f"the run name {shown} contains {bad!r}: {RUN_NAME_HELP}")
    return name


def safe_run_path(runs_dir: str | Path, name: object) -> Path:
    """The folder for run `name` inside `runs_dir`, after checking that it stays inside.

    The name is checked by check_run_name; if the folder already exists as a symlink, it
    must resolve to a folder directly inside the runs folder. Raises TrainerError."""
    name = check_run_name(name)
    root = Path(runs_dir).resolve()
    path = root / name
    if path.resolve().parent != root:
        raise TrainerError(f"the run {name!r} points outside the runs folder {root}: choose another name")
    return path


__all__ = ["MAX_RUN_NAME", "check_run_name", "safe_run_path"]
