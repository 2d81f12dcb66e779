"""Run names are one plain folder name inside the runs folder: anything that could reach
outside it (.., /, an absolute path, a symlink), hide (control or invisible characters,
a leading dot) or overflow (more than 100 characters) is refused, and nothing is written
outside the runs folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer import RunConfig, TrainerError, fit
from trainer.run_names import check_run_name, safe_run_path

from .conftest import assert_one_line_error, cli

BAD_NAMES = {
    "dotdot": "..",
    "dot": ".",
    "dotdot-prefix": "../escape",
    "dotdot-inside": "a..b",
    "nested-dotdot": "runs/../../escape",
    "slash": "a/b",
    "backslash": "a\\..\\b",
    "absolute": "/tmp/escape",
    "home": "~/escape",
    "nul": "run\x00name",
    "newline": "run\nname",
    "tab": "run\tname",
    "escape-sequence": "run\x1b[31mred",
    "del": "run\x7f",
    "c1-control": "run\x85",
    "right-to-left-override": "run\u202egnp.exe",
    "zero-width-space": "run\u200bname",
    "leading-dot": ".hidden",
    "leading-space": " run",
    "trailing-space": "run ",
    "space-inside": "my run",
    "shell-chars": "run;rm -rf ~",
    "too-long": "r" * 101,
    "empty": "",
    "not-a-string": 42,
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_bad_run_names_are_refused(case, tmp_path):
    name = BAD_NAMES[case]
    with pytest.raises(TrainerError) as err:
        safe_run_path(tmp_path / "runs", name)
    message = str(err.value)
    assert "\n" not in message and "letters, digits" in message
    # the message shows the name safely: no raw control characters reach a terminal or page
    assert not any(ord(c) < 32 or ord(c) == 127 for c in message)


@pytest.mark.parametrize("name", ["digits-2d", "run_1.v2", "gmm2d-beta4", "Ünïcode-Läufe", "r" * 100, "a.b"])
def test_good_run_names_stay_inside_the_runs_folder(name, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    path = safe_run_path(root, name)
    assert path.parent == root.resolve() and path.name == name
    assert check_run_name(name) == name


def test_a_symlink_out_of_the_runs_folder_is_refused(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "innocent").symlink_to(outside, target_is_directory=True)
    with pytest.raises(TrainerError, match="points outside the runs folder"):
        safe_run_path(root, "innocent")


def _tree(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*")}


def test_nothing_is_written_outside_the_runs_folder(tmp_path, monkeypatch):
    """Try every bad name the way the app trains a named run (safe_run_path, then fit), from
    a working directory beside the runs folder: the whole tree stays exactly as it was."""
    base = tmp_path / "base"
    root = base / "work" / "runs"
    root.mkdir(parents=True)
    (base / "work" / "keep.txt").write_text("keep")
    monkeypatch.chdir(base / "work")
    before = _tree(tmp_path)
    cfg = RunConfig(data="digits")
    cfg.model.hidden, cfg.train.epochs, cfg.train.threads = [8], 1, 1
    for name in BAD_NAMES.values():
        with pytest.raises(TrainerError):
            fit(cfg, safe_run_path(root, name))
    assert _tree(tmp_path) == before
    assert (base / "work" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("out", ["run\x01x", "run\nx", "r" * 101])
def test_cli_refuses_control_characters_and_long_names(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(capsys, "fit", "--data", "digits", "--out", out, "--epochs", "1", "--threads", "1", "--quiet")
    assert_one_line_error(r, "run folder name")
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_nul_in_the_out_path(tmp_path):
    cfg = RunConfig(data="digits")
    cfg.train.threads = 1
    with pytest.raises(TrainerError, match="control characters"):
        fit(cfg, str(tmp_path / "run\x00x"))
    assert os.listdir(tmp_path) == []


def test_the_apps_training_jobs_refuse_bad_names_and_symlinks(tmp_path):
    """explorer.services.jobs.start (the Train button) with every bad name, and with a name
    that is a symlink to a folder outside the runs folder: refused, nothing written."""
    from explorer.services import jobs

    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "innocent").symlink_to(outside, target_is_directory=True)
    before = _tree(tmp_path)
    cfg = RunConfig(data="digits")
    cfg.model.hidden, cfg.train.epochs = [8], 1
    # (the app trims surrounding whitespace from a typed name instead of refusing it)
    names = [n for n in BAD_NAMES.values() if not (isinstance(n, str) and n.strip() != n)]
    for name in [*names, "innocent"]:
        with pytest.raises(TrainerError):
            jobs.start(root, name, cfg, threads=1)
    assert _tree(tmp_path) - {".jobs.lock", "runs/.jobs.lock"} == before
    assert list(outside.iterdir()) == []
