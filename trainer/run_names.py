"""Run names: the one rule for what may name a run folder, and where it is checked.

A run name (what the app trains into `<runs folder>/<name>`) is one plain folder name,
never a path:

    letters, digits, '-', '_' and '.'; 1 to MAX_RUN_NAME characters
    no leading dot and no '..' (nothing hidden, nothing above the runs folder)
    not 'uploads' (the runs folder's uploads/ holds the app's uploaded data sets)

    check_run_name(name)             the rule itself; TrainerError saying what is wrong
                                     (max_chars=MAX_APP_RUN_NAME for a name given in the app)
    safe_run_path(runs_dir, name)    the folder for a name, also refusing a symlink out
    check_out_folder(path)           the CLI's --out, any path a person chooses: only what
                                     no folder name should hold (control characters) and
                                     the same length limit for its last part
    run_name_from(text)              text (a data file's stem, a run's name plus a suffix)
                                     cleaned up into a name that passes check_run_name

Every message is one line that shows the name safely (repr, cut at 40 characters).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from .errors import TrainerError

MAX_RUN_NAME = 100  # characters


def name_help(max_chars: int = MAX_RUN_NAME) -> str:
    """What a run name may be, for the end of an error message."""
    return f"use letters, digits, '-', '_' and '.' (up to {max_chars} characters, no folders)"


# Names given in the app (typed in the Train form, or suggested by it) are shorter: the app
# makes new names from them by adding a suffix ("-2", "-seed3"), and those must fit too.
MAX_APP_RUN_NAME = 80
RESERVED_NAMES = ("uploads",)  # folders of the runs folder that are not runs
_HIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn")  # unicode categories: control, format (invisible), ...


def _name_char(c: str) -> bool:
    return c.isalnum() or c in "-_."


def check_run_name(name: object, max_chars: int = MAX_RUN_NAME) -> str:
    """`name` if it is one plain folder name of at most `max_chars` characters; otherwise
    TrainerError saying what is wrong."""
    help_ = name_help(max_chars)
    if not isinstance(name, str) or not name:
        raise TrainerError(f"the run name is empty: {help_}")
    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    if any(unicodedata.category(c) in _HIDDEN for c in name):
        raise TrainerError(f"the run name {shown} contains control or invisible characters: {help_}")
    if len(name) > max_chars:
        raise TrainerError(f"the run name is {len(name)} characters long, more than {max_chars}: {help_}")
    if "/" in name or "\\" in name:
        raise TrainerError(f"the run name {shown} contains a folder separator: {help_}")
    if ".." in name or name.startswith("."):
        raise TrainerError(f"the run name {shown} starts with a dot or contains '..': {help_}")
    if name != name.strip():
        raise TrainerError(f"the run name {shown} starts or ends with a space: {help_}")
    if not all(_name_char(c) for c in name):
        bad = next(c for c in name if not _name_char(c))
        raise TrainerError(f"the run name {shown} contains {bad!r}: {help_}")
    if name in RESERVED_NAMES:
        raise TrainerError(f"the run name {shown} is kept for the app's uploaded data sets: choose another name")
    return name


def safe_run_path(runs_dir: str | Path, name: object, max_chars: int = MAX_RUN_NAME) -> Path:
    """The folder for run `name` inside `runs_dir`, after checking that it stays inside.

    The name is checked by check_run_name; if the folder already exists as a symlink, it
    must resolve to a folder directly inside the runs folder. Raises TrainerError."""
    name = check_run_name(name, max_chars)
    root = Path(runs_dir).resolve()
    path = root / name
    if path.resolve().parent != root:
        raise TrainerError(f"the run {name!r} points outside the runs folder {root}: choose another name")
    return path


def check_out_folder(run_dir: str | Path) -> Path:
    """The CLI's --out (or fit's out_dir) as a Path, refusing what cannot be a plain run
    folder: NUL or other control characters anywhere in it, a last part longer than
    MAX_RUN_NAME characters. Any other path a person chooses is theirs."""
    s = str(run_dir)
    if not s or any(unicodedata.category(c) == "Cc" for c in s):
        raise TrainerError("run folder name contains control characters: use letters, digits, '-' and '_'")
    if len(Path(s).name) > MAX_RUN_NAME:
        raise TrainerError(f"run folder name is longer than {MAX_RUN_NAME} characters")
    return Path(s)


def run_name_from(text: str, max_chars: int = MAX_RUN_NAME) -> str:
    """`text` made into a run name of at most `max_chars` characters: every character the
    rule refuses becomes '-', leading and trailing dots and dashes go ('run' if nothing is
    left), '..' becomes '.'. The result may still be a reserved name (RESERVED_NAMES)."""
    name = "".join(c if _name_char(c) else "-" for c in text).strip(".-") or "run"
    while ".." in name:
        name = name.replace("..", ".")
    return name[:max_chars]
