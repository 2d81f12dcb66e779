"""The command line as a contract: every bad input exits 2 with one line on stderr that
names the problem (no traceback), and eval --json has the documented keys.

Most cases call the real `main` in this process (the `cli` fixture: its exit status and
stderr, fast); a few run `python -m trainer` as a real process to check the wiring."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from trainer import TrainerError
from trainer.config import RunConfig


def assert_user_error(result, *fragments: str):
    """Exit 2, one line on stderr starting 'error:', containing every fragment, no traceback."""
    assert result.status == 2, (result.status, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""


def fit_args(data, out, *extra):
    return ("fit", "--data", str(data), "--out", str(out), "--threads", "1", "--epochs", "1", "--quiet", *extra)


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


# -- bad data files -------------------------------------------------------------------------------

def write_bad_file(tmp_path, kind: str):
    """Write one kind of bad data; return (spec, fragments the message must contain)."""
    if kind == "empty file":
        p = tmp_path / "empty.csv"
        p.write_bytes(b"")
        return p, ["empty.csv", "empty"]
    if kind == "ragged csv":
        p = tmp_path / "ragged.csv"
        p.write_text("1,2,3\n4,5,6\n7,8\n")
        return p, ["ragged.csv", "line 3", "ragged"]
    if kind == "non-numeric csv":
        p = tmp_path / "text.csv"
        p.write_text("1,2\n3,four\n")
        return p, ["text.csv", "line 2", "non-numeric", "four"]
    if kind == "nan in csv":
        p = tmp_path / "nan.csv"
        p.write_text("1,2\nnan,3\n")
        return p, ["nan.csv", "NaN or infinite"]
    if kind == "inf in npy":
        p = tmp_path / "inf.npy"
        np.save(p, np.array([[1.0, np.inf], [2.0, 3.0], [4.0, 5.0]]))
        return p, ["inf.npy", "NaN or infinite"]
    if kind == "nan in npz":
        p = tmp_path / "nan.npz"
        np.savez(p, x=np.array([[1.0, np.nan], [2.0, 3.0]]))
        return p, ["nan.npz", "NaN or infinite"]
    if kind == "1-d array":
        p = tmp_path / "flat.npy"
        np.save(p, np.arange(10.0))
        return p, ["flat.npy", "shape [10]"]
    if kind == "5-d array":
        p = tmp_path / "deep.npy"
        np.save(p, np.zeros((2, 2, 2, 2, 2)))
        return p, ["deep.npy", "5 dimensions"]
    if kind == "text in npy":
        p = tmp_path / "strings.npy"
        np.save(p, np.array([["a", "b"], ["c", "d"]]))
        return p, ["strings.npy", "not numeric"]
    if kind == "npz without x":
        p = tmp_path / "nox.npz"
        np.savez(p, data=np.zeros((4, 2)))
        return p, ["nox.npz", "no array named 'x'", "data"]
    if kind == "object npy":
        p = tmp_path / "obj.npy"
        np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return p, ["obj.npy", "unpickling"]
    if kind == "text named npz":
        p = tmp_path / "notes.npz"
        p.write_text("These are not the arrays you are looking for.\n")
        return p, ["notes.npz", "not a .npz file", "np.savez"]
    if kind == "text named npy":
        p = tmp_path / "notes.npy"
        p.write_text("1,2,3\n4,5,6\n")
        return p, ["notes.npy", "not a .npy file", "np.save"]
    if kind == "labels do not match":
        p = tmp_path / "ylen.npz"
        np.savez(p, x=np.zeros((5, 3)), y=np.arange(4))
        return p, ["ylen.npz", "4 labels for 5 samples"]
    if kind == "idx labels do not match":
        (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((6, 4, 4), np.uint8)))
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
        return tmp_path / "train-images-idx3-ubyte", ["train-images-idx3-ubyte", "5 labels for 6 samples"]
    if kind == "truncated idx":
        p = tmp_path / "t10k-images-idx3-ubyte"
        p.write_bytes(idx_bytes(np.zeros((6, 4, 4), np.uint8))[:-10])
        return p, ["t10k-images-idx3-ubyte", "promises 96 bytes", "has 86"]
    if kind == "damaged idx.gz":
        p = tmp_path / "train-images-idx3-ubyte.gz"
        good = gzip.compress(idx_bytes(np.arange(96, dtype=np.uint8).reshape(6, 4, 4)))
        p.write_bytes(good[:12] + bytes(b ^ 0xFF for b in good[12:30]) + good[30:])
        return p, ["train-images-idx3-ubyte.gz", "cannot read the IDX file"]
    if kind == "unreadable image":
        folder = tmp_path / "imgs"
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "good.png")
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        return folder, ["broken.png", "cannot read the image"]
    if kind == "images of different sizes":
        folder = tmp_path / "mixed"
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(folder / "b.png")
        return folder, ["mixed", "different sizes", "size="]
    if kind == "folder without images":
        folder = tmp_path / "none"
        folder.mkdir()
        (folder / "readme.txt").write_text("hi")
        return folder, ["none", "no PNG or JPEG"]
    if kind == "unknown file type":
        p = tmp_path / "data.parquet"
        p.write_bytes(b"PAR1")
        return p, ["data.parquet", "unknown file type"]
    raise AssertionError(kind)


BAD_FILES = ["empty file", "ragged csv", "non-numeric csv", "nan in csv", "inf in npy", "nan in npz",
             "1-d array", "5-d array", "text in npy", "npz without x", "object npy", "text named npz",
             "text named npy", "labels do not match",
             "idx labels do not match", "truncated idx", "damaged idx.gz", "unreadable image",
             "images of different sizes", "folder without images", "unknown file type"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_data_file(cli, tmp_path, kind):
    spec, fragments = write_bad_file(tmp_path, kind)
    out = tmp_path / "run"
    assert_user_error(cli(*fit_args(spec, out)), *fragments)
    assert not (out / "model.safetensors").exists()


# -- bad data specs and options --------------------------------------------------------------------

@pytest.mark.parametrize("spec,fragments", [
    ("no-such-data", ["no-such-data", "no such file or folder", "digits, shapes, gmm2d, linear-gaussian"]),
    ("gmm2d:k=abc", ["gmm2d:k=abc", "k='abc'", "not a valid int"]),
    ("gmm2d:sigma=nan", ["sigma must be finite"]),
    ("gmm2d:k=0", ["k=0", "between 1 and 1000"]),
    ("gmm2d:colour=red", ["unknown option", "colour"]),
    ("gmm2d:k", ["bad option 'k'", "key=value"]),
    ("digits:test=0.95", ["test=0.95", "between 0.01 and 0.9"]),
    ("linear-gaussian:d=10000,n=10000000", ["more than the limit"]),
])
def test_bad_data_spec(cli, tmp_path, spec, fragments):
    assert_user_error(cli(*fit_args(spec, tmp_path / "run")), *fragments)


@pytest.mark.parametrize("extra,fragments", [
    (["--arch", "transformer"], ["--arch", "invalid choice", "transformer"]),
    (["--latent-dim", "two"], ["--latent-dim", "invalid int value"]),
    (["--latent-dim", "0"], ["latent dim must be between 1 and 4096"]),
    (["--hidden", "512,abc"], ["--hidden", "integers separated by commas"]),
    (["--hidden", "0"], ["hidden sizes must be between 1 and 65536"]),
    (["--sigma-dec", "-1"], ["--sigma-dec", "'learned' or a positive number"]),
    (["--sigma-dec", "inf"], ["--sigma-dec", "'learned' or a positive number"]),
    (["--likelihood", "poisson"], ["--likelihood", "invalid choice"]),
    (["--lr", "nan"], ["learning rate must be a positive number"]),
    (["--lr", "0"], ["learning rate must be a positive number"]),
    (["--beta", "-1"], ["beta must be a number >= 0"]),
    (["--mc-samples", "0"], ["mc samples must be between 1 and 1000"]),
    (["--epochs", "0"], ["epochs must be between 1 and 100000"]),
    (["--batch-size", "0"], ["batch size must be between 1 and 1000000"]),
    (["--seed", "-3"], ["seed must be a non-negative integer"]),
    (["--threads", "-1"], ["threads must be between 0"]),
    (["--kl-warmup", "-2"], ["kl warm-up must be between 0 and 100000"]),
    (["--device", "tpu"], ["--device", "invalid choice"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_bad_fit_option(cli, tmp_path, extra, fragments):
    out = tmp_path / "run"
    assert_user_error(cli(*fit_args("digits", out, *extra)), *fragments)
    assert not (out / "model.safetensors").exists()


def test_missing_out_and_missing_command(cli):
    assert_user_error(cli("fit", "--data", "digits"), "required", "--out")
    assert_user_error(cli(), "required", "command")
    assert_user_error(cli("train"), "invalid choice", "train")


def test_bernoulli_on_data_outside_0_1(cli, tmp_path):
    assert_user_error(cli(*fit_args("gmm2d:n=200", tmp_path / "run", "--likelihood", "bernoulli")),
                      "gmm2d", "bernoulli needs values in [0, 1]", "--likelihood gaussian")


def test_conv_on_tiny_images(cli, tmp_path):
    assert_user_error(cli(*fit_args("digits", tmp_path / "a", "--arch", "conv")),
                      "conv needs images of at least 16x16", "[1, 8, 8]", "--arch mlp")
    assert_user_error(cli(*fit_args("gmm2d:n=200", tmp_path / "b", "--arch", "conv")),
                      "conv needs images", "[2]")


def test_existing_run_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(*fit_args("gmm2d:n=200", out, "--hidden", "8")).status == 0
    before = (out / "model.safetensors").read_bytes()
    assert_user_error(cli(*fit_args("gmm2d:n=200", out, "--hidden", "8")), "already holds a run", "--resume")
    assert_user_error(cli(*fit_args("gmm2d:n=200", out, "--hidden", "16", "--resume")),
                      "--resume", "hidden differ", "leave those out")
    assert (out / "model.safetensors").read_bytes() == before


SETTINGS = ("--data", "gmm2d:n=200", "--hidden", "8", "--latent-dim", "1", "--sigma-dec", "0.5",
            "--beta", "0.5", "--kl-warmup", "2", "--batch-size", "16", "--lr", "3e-3", "--seed", "7")


def test_resume_needs_only_the_run_folder(cli, tmp_path):
    """`fit --out RUN --resume` takes the data, model and training settings from RUN's
    config.json and, without --epochs, trains to the epochs the run was started with: a
    cancelled run finishes with the numbers an uninterrupted one gets (defaults for any of
    the settings would change them)."""
    from trainer import fit

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli("fit", "--out", str(whole), *SETTINGS, "--epochs", "3", "--threads", "1", "--quiet").status == 0
    stop = threading.Event()
    cfg = json.loads((whole / "config.json").read_text())
    assert fit(RunConfig.from_dict(cfg), part, on_epoch=lambda row: stop.set(), stop=stop) == "cancelled"
    config_before = (part / "config.json").read_bytes()

    result = cli("fit", "--out", str(part), "--resume", "--threads", "1", "--quiet")
    assert result.status == 0, result.stderr
    assert json.loads((part / "status.json").read_text())["state"] == "done"
    assert json_lines(part / "metrics.jsonl") and \
        [r["test_elbo"] for r in json_lines(part / "metrics.jsonl")] == \
        [r["test_elbo"] for r in json_lines(whole / "metrics.jsonl")]
    assert (part / "config.json").read_bytes() == config_before


def test_resume_refuses_settings_that_contradict_the_run(cli, tmp_path):
    """A flag that would change a resumed run into another one is refused, naming the
    setting; nothing in the folder changes. --epochs and --lr may change."""
    out = tmp_path / "run"
    assert cli("fit", "--out", str(out), *SETTINGS, "--epochs", "1", "--threads", "1", "--quiet").status == 0
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name != ".lock"}
    resume = ("fit", "--out", str(out), "--resume", "--epochs", "2", "--threads", "1", "--quiet")
    for flags, named in [(("--batch-size", "32"), "batch_size"), (("--seed", "0"), "seed"),
                         (("--beta", "1"), "beta"), (("--data", "digits"), "data"),
                         (("--latent-dim", "2", "--sigma-dec", "learned"), "latent_dim, sigma_dec")]:
        assert_user_error(cli(*resume, *flags), "--resume", f"{named} differ", "only --epochs and --lr")
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name != ".lock"} == before
    # A folder with no run is nothing to resume (and is not created).
    assert_user_error(cli("fit", "--out", str(tmp_path / "none"), "--resume"), "holds no run to resume", "--out")
    assert not (tmp_path / "none").exists()
    # The same values as saved are no contradiction.
    assert cli(*resume, "--batch-size", "16", "--hidden", "8").status == 0
    assert len(json_lines(out / "metrics.jsonl")) == 2


def test_resume_to_fewer_epochs_than_done(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(*fit_args("gmm2d:n=200", out, "--hidden", "8", "--epochs", "2")).status == 0
    result = cli(*fit_args("gmm2d:n=200", out, "--hidden", "8", "--resume"))  # --epochs 1
    assert_user_error(result, "already trained 2 epochs", "--epochs above 2")
    assert [r["epoch"] for r in json_lines(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- fit --config: a run's settings from a file --------------------------------------------------

TIMINGS = ("wall_time", "epoch_time_s", "samples_per_s")  # the only fields of a metrics row that may differ
DIGITS_SETTINGS = ("--data", "digits", "--hidden", "16", "--latent-dim", "3", "--beta", "0.5", "--kl-warmup", "1",
                   "--mc-samples", "2", "--batch-size", "64", "--lr", "2e-3", "--seed", "5", "--epochs", "3")


def _numbers(run):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in json_lines(run / "metrics.jsonl")]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-epoch digits run with non-default settings, trained by the command line."""
    from trainer.__main__ import main

    out = tmp_path_factory.mktemp("config") / "first"
    assert main(["fit", "--out", str(out), *DIGITS_SETTINGS, "--threads", "1", "--quiet"]) == 0
    return out


def test_fit_config_reproduces_a_finished_run(cli, finished_run, tmp_path):
    """`fit --config RUN/config.json --out NEW` trains RUN again: every number of every
    metrics row (all but the timings) and every tensor of model.safetensors are the same."""
    again = tmp_path / "again"
    result = cli("fit", "--config", finished_run / "config.json", "--out", again, "--quiet")
    assert result.status == 0, result.stderr
    assert _numbers(again) == _numbers(finished_run) and len(_numbers(again)) == 3
    first, second = _weights(finished_run), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert json.loads((again / "config.json").read_text()) == json.loads((finished_run / "config.json").read_text())


def test_a_flag_overrides_the_config_file(cli, finished_run, tmp_path):
    out = tmp_path / "other"
    result = cli("fit", "--config", finished_run / "config.json", "--out", out, "--epochs", "1", "--seed", "9",
                 "--quiet")
    assert result.status == 0, result.stderr
    saved, given = (json.loads((d / "config.json").read_text()) for d in (finished_run, out))
    assert (given["train"]["epochs"], given["train"]["seed"]) == (1, 9)
    for section in ("model", "train"):  # everything else is the file's
        for key, value in saved[section].items():
            if key not in ("epochs", "seed"):
                assert given[section][key] == value, (section, key)
    assert given["data"] == "digits" and len(json_lines(out / "metrics.jsonl")) == 1


def test_the_machine_settings_of_a_config_file(tmp_path):
    """--device and --threads: the flag, else the file's, else the defaults (auto, all
    cores); the file's informational fields (data_shape, versions) are ignored."""
    from trainer.__main__ import build_parser, fit_config, fit_processes

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"data": "gmm2d:n=200", "data_shape": [9], "versions": {"torch": "0"}}))

    def resolved(*flags):
        a = build_parser().parse_args(["fit", "--config", str(path), "--out", str(tmp_path / "r"), *flags])
        return fit_config(a), fit_processes(a, fit_config(a))

    cfg, nproc = resolved()
    assert (cfg.data, cfg.train.device, cfg.train.threads, nproc) == ("gmm2d:n=200", "auto", 0, 1)
    assert (cfg.data_shape, cfg.versions) == ([], {})
    cfg, _ = resolved("--device", "cpu", "--threads", "2")
    assert (cfg.train.device, cfg.train.threads) == ("cpu", 2)
    path.write_text(json.dumps({"train": {"device": "cpu", "threads": 3, "world_size": 2}}))
    cfg, nproc = resolved()
    assert (cfg.train.device, cfg.train.threads, nproc) == ("cpu", 3, 2)
    assert resolved("--nproc", "1", "--threads", "1")[1] == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content,fragments", [
    (None, ["missing --config file"]),
    ("{not json", ["--config file is not valid JSON"]),
    ("[1, 2]", ["must hold a JSON object"]),
    ('{"train": {"epochs": "many"}}', ["config.train.epochs has the wrong type"]),
    ('{"model": {"depth": 3}}', ["unknown field(s) depth"]),
    ('{"train": {"epochs": 0}}', ["epochs must be between 1 and 100000"]),
    ('{"model": {"arch": "os.system"}}', ["unknown architecture 'os.system'"]),
    ("folder", ["cannot read --config file"]),
])
def test_a_bad_or_missing_config_file_is_a_one_line_error(cli, tmp_path, content, fragments):
    path = tmp_path / "settings.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    assert_user_error(cli("fit", "--config", path, "--out", out, "--threads", "1", "--quiet"),
                      str(path), *fragments)
    assert not out.exists()


def test_config_with_resume_is_refused(cli, finished_run, tmp_path):
    before = (finished_run / "model.safetensors").read_bytes()
    assert_user_error(cli("fit", "--config", finished_run / "config.json", "--out", finished_run, "--resume"),
                      "--config cannot go with --resume")
    assert (finished_run / "model.safetensors").read_bytes() == before


# -- bad run folders for eval and sample ------------------------------------------------------------

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from trainer import fit

    from tests.trainer.conftest import small_config

    out = tmp_path_factory.mktemp("cli") / "digits"
    fit(small_config("digits", hidden=[16], epochs=1), out)
    return out


def damaged_copy(good_run, tmp_path, damage: str):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    if damage == "missing folder":
        shutil.rmtree(run)
    elif damage == "empty folder":
        shutil.rmtree(run)
        run.mkdir()
    elif damage == "config not json":
        (run / "config.json").write_text("{not json")
    elif damage == "unknown architecture":
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["arch"] = "os.system"
        (run / "config.json").write_text(json.dumps(cfg))
    elif damage == "missing weights":
        (run / "model.safetensors").unlink()
    elif damage == "truncated weights":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "a file, not a folder":
        shutil.rmtree(run)
        run.write_text("hello")
    return run


@pytest.mark.parametrize("damage,fragment", [
    ("missing folder", "no such run folder"),
    ("empty folder", "config.json"),
    ("config not json", "not valid JSON"),
    ("unknown architecture", "unknown architecture 'os.system'"),
    ("missing weights", "model.safetensors"),
    ("truncated weights", "model.safetensors"),
    ("a file, not a folder", "no such run folder"),
])
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_bad_run_folder(cli, good_run, tmp_path, damage, fragment, command):
    run = damaged_copy(good_run, tmp_path, damage)
    args = ("eval", str(run), "--k", "5") if command == "eval" else ("sample", str(run), "--out", str(tmp_path / "s.png"))
    assert_user_error(cli(*args), str(run), fragment)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("args,fragments", [
    (["--k", "0"], ["--k must be at least 1"]),
    (["--mc-samples", "0"], ["--mc-samples must be at least 1"]),
    (["--split", "valid"], ["--split", "invalid choice"]),
    (["--threads", "-1"], ["--threads must be between 0"]),
    (["--seed", "-1"], ["--seed must be a non-negative integer"]),
    (["--device", "tpu"], ["--device", "invalid choice"]),
])
def test_bad_eval_option(cli, good_run, args, fragments):
    assert_user_error(cli("eval", str(good_run), *args), *fragments)


def test_bad_sample_options(cli, good_run, tmp_path, gmm_run):
    assert_user_error(cli("sample", str(good_run), "--n", "0", "--out", str(tmp_path / "a.png")), "--n must be between 1")
    assert_user_error(cli("sample", str(good_run), "--out", str(tmp_path / "a.jpg")), "a.jpg", "must be a .png")
    assert_user_error(cli("sample", str(good_run), "--out", str(tmp_path / "nowhere" / "a.png")), "nowhere", "no such folder")
    assert_user_error(cli("sample", str(gmm_run), "--out", str(tmp_path / "a.png")), "not images")


# -- what succeeds ----------------------------------------------------------------------------------

def test_sample_writes_a_png_grid(cli, good_run, tmp_path):
    result = cli("sample", str(good_run), "--n", "9", "--out", str(tmp_path / "s.png"))
    assert result.status == 0, result.stderr
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG"
        # 3 x 3 tiles of 8 pixels with 1-pixel padding, scaled by 64 // 8
        assert im.size == ((3 * 9 + 1) * 8, (3 * 9 + 1) * 8)


EVAL_KEYS = {"n", "elbo", "recon", "kl", "log_px", "gap", "active_units"}


def test_eval_json_keys_for_gmm2d(cli, gmm_run):
    result = cli("eval", str(gmm_run), "--k", "50", "--json", "--threads", "1", "--no-quadrature")
    assert result.status == 0, result.stderr
    out = json.loads(result.stdout)
    assert EVAL_KEYS | {"exact_log_px"} <= set(out)
    assert out["n"] == 1000
    assert abs(out["elbo"] - (out["recon"] - out["kl"])) < 1e-6  # float32 terms
    assert abs(out["gap"] - (out["log_px"] - out["elbo"])) < 1e-9
    assert out["elbo"] < out["log_px"] < out["exact_log_px"] + 0.05  # per sample, nats, log-likelihood sign
    assert out["kl"] > 0 and out["active_units"] == 2


def test_eval_json_keys_for_linear_gaussian_and_train_split(cli, linear_gaussian_run):
    result = cli("eval", str(linear_gaussian_run), "--k", "20", "--json", "--split", "train", "--mc-samples", "2")
    assert result.status == 0, result.stderr
    out = json.loads(result.stdout)
    assert EVAL_KEYS | {"exact_log_px"} <= set(out)
    assert out["n"] == 1600 and out["split"] == "train"


def test_eval_json_has_no_exact_log_px_without_a_known_density(cli, good_run):
    out = json.loads(cli("eval", str(good_run), "--k", "5", "--json", "--no-quadrature").stdout)
    assert EVAL_KEYS <= set(out) and "exact_log_px" not in out
    assert out["n"] == 359


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_eval_on_cuda_without_a_gpu_is_a_one_line_error(cli, good_run):
    assert_user_error(cli("eval", str(good_run), "--k", "5", "--device", "cuda"),
                      "--device cuda was asked for but no CUDA GPU is available: use --device cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_eval_on_a_gpu_agrees_with_the_cpu(cli, gmm_run):
    """The same estimates up to Monte Carlo noise (the GPU draws other noise); exact terms equal."""
    cpu, gpu = (json.loads(cli("eval", str(gmm_run), "--k", "200", "--mc-samples", "20", "--json",
                               "--device", d).stdout) for d in ("cpu", "cuda"))
    assert cpu["n"] == gpu["n"] and cpu["exact_log_px"] == pytest.approx(gpu["exact_log_px"], abs=1e-6)
    for key in ("elbo", "recon", "log_px"):
        assert gpu[key] == pytest.approx(cpu[key], abs=0.05), key  # seed to seed on the CPU: s.d. 0.005
    assert gpu["kl"] == pytest.approx(cpu["kl"], abs=1e-4)  # the KL is closed form: no noise


def test_eval_text_output(cli, good_run):
    result = cli("eval", str(good_run), "--k", "5", "--no-quadrature")
    assert result.status == 0
    assert "per sample, nats, higher is better" in result.stdout
    for key in ("elbo", "recon", "kl", "log_px", "gap", "active units"):
        assert key in result.stdout


# -- as a real process --------------------------------------------------------------------------------

def python_m_trainer(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_real_process_exit_status_and_json(tmp_path, gmm_run):
    bad = tmp_path / "ragged.csv"
    bad.write_text("1,2\n3\n")
    p = python_m_trainer("fit", "--data", bad, "--out", tmp_path / "r")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {bad}: line 2 has 1 values, expected 2 (ragged rows)"]

    p = python_m_trainer("eval", gmm_run, "--k", "10", "--json", "--threads", "1", "--no-quadrature")
    assert p.returncode == 0, p.stderr
    assert EVAL_KEYS | {"exact_log_px"} <= set(json.loads(p.stdout))


def test_huge_integers_in_config_json_are_a_trainer_error():
    with pytest.raises(TrainerError, match="out of range"):
        RunConfig.from_dict({"train": {"lr": 10**400}})
    with pytest.raises(TrainerError, match="out of range"):
        RunConfig.from_dict({"model": {"sigma_dec": -(10**400)}})
