"""Damaged or hostile run folders: each gives a clear one-line error (CLI exit 2, TrainerError
from load_run), nothing is ever unpickled, the damaged files are left as they were, and the
other runs in the same folder stay usable."""

from __future__ import annotations

import json
import pickle
import resource
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer import TrainerError, load_run

from .conftest import (
    MakesMarker,
    assert_one_line_error,
    assert_pickle_would_touch,
    assert_usable,
    cli,
    cli_process,
)

MODEL = "model.safetensors"


# -- ways to damage model.safetensors ------------------------------------------------------------

def _truncate_half(d: Path):
    b = (d / MODEL).read_bytes()
    (d / MODEL).write_bytes(b[: len(b) // 2])


def _truncate_in_header(d: Path):
    (d / MODEL).write_bytes((d / MODEL).read_bytes()[:20])


def _empty(d: Path):
    (d / MODEL).write_bytes(b"")


def _flip_header_byte(d: Path):
    b = bytearray((d / MODEL).read_bytes())
    b[30] ^= 0xFF  # inside the JSON header
    (d / MODEL).write_bytes(bytes(b))


def _header_length_huge(d: Path):
    b = (d / MODEL).read_bytes()
    (d / MODEL).write_bytes(struct.pack("<Q", 2**62) + b[8:])


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / MODEL)


def _wrong_shape(d: Path):
    t = _tensors(d)
    t["decoder_net.0.weight"] = torch.zeros(33, 2)
    save_file(t, d / MODEL)


def _wrong_dtype(d: Path):
    t = {k: v.double() for k, v in _tensors(d).items()}
    save_file(t, d / MODEL)


def _missing_key(d: Path):
    t = _tensors(d)
    del t["encoder_net.net.0.weight"]
    save_file(t, d / MODEL)


def _extra_key(d: Path):
    t = _tensors(d)
    t["backdoor.weight"] = torch.zeros(3)
    save_file(t, d / MODEL)


def _nan_weight(d: Path):
    t = _tensors(d)
    t["decoder_net.2.weight"][0, 0] = float("nan")
    save_file(t, d / MODEL)


def _inf_weight(d: Path):
    t = _tensors(d)
    t["log_sigma_dec"] = torch.tensor(float("inf"))
    save_file(t, d / MODEL)


def _missing_file(d: Path):
    (d / MODEL).unlink()


def _directory(d: Path):
    (d / MODEL).unlink()
    (d / MODEL).mkdir()


DAMAGES = {
    "truncated": (_truncate_half, "damaged or not a safetensors file"),
    "truncated-in-header": (_truncate_in_header, "damaged or not a safetensors file"),
    "empty": (_empty, "damaged or not a safetensors file"),
    "flipped-header-byte": (_flip_header_byte, "damaged or not a safetensors file"),
    "header-length-2^62": (_header_length_huge, "damaged or not a safetensors file"),
    "wrong-shape": (_wrong_shape, "decoder_net.0.weight has shape [33, 2], expected [32, 2]"),
    "wrong-dtype": (_wrong_dtype, "dtype F64, expected F32"),
    "missing-key": (_missing_key, "missing encoder_net.net.0.weight"),
    "extra-key": (_extra_key, "unexpected backdoor.weight"),
    "nan-weight": (_nan_weight, "decoder_net.2.weight holds NaN or infinite values"),
    "inf-weight": (_inf_weight, "log_sigma_dec holds NaN or infinite values"),
    "missing": (_missing_file, "no saved checkpoint yet"),
    "a-directory": (_directory, "damaged or not a safetensors file"),
}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_damaged_weights_give_one_line_error(case, runs_dir, capsys):
    damage, expected = DAMAGES[case]
    bad = runs_dir / "bad"
    damage(bad)
    before = _snapshot(bad)

    with pytest.raises(TrainerError) as err:
        load_run(bad)
    message = str(err.value)
    assert "\n" not in message and expected in message and str(bad) in message

    assert_one_line_error(cli(capsys, "eval", bad, "--k", "5", "--threads", "1"), expected)
    assert_one_line_error(cli(capsys, "sample", bad, "--n", "4", "--out", runs_dir / "s.png"), expected)
    assert not (runs_dir / "s.png").exists()

    assert _snapshot(bad) == before, "loading must not change the damaged run"
    assert torch.zeros(1).device.type == "cpu", "a failed load must not leave torch on the meta device"
    assert_usable(capsys, runs_dir / "good")


def test_every_single_bit_flip_in_the_header_is_refused_cleanly(runs_dir):
    """Three bit flips of every header byte (bit 0: '2' -> '3', '{' -> 'z'; bit 5: letter case;
    bit 7: invalid UTF-8), read by the checkpoint loader against the run's architecture: a
    TrainerError each time, never another exception. Every 50th goes through load_run."""
    from trainer.checkpoints import _skeleton, load_safetensors
    from trainer.runs import load_config

    bad = runs_dir / "bad"
    original = (bad / MODEL).read_bytes()
    header_len = 8 + struct.unpack("<Q", original[:8])[0]
    expected = {k: (tuple(v.shape), v.dtype) for k, v in _skeleton(load_config(bad)).state_dict().items()}
    outcomes = {"refused": 0, "loaded": 0}
    for n, (i, bit) in enumerate((i, bit) for i in range(header_len) for bit in (0, 5, 7)):
        b = bytearray(original)
        b[i] ^= 1 << bit
        (bad / MODEL).write_bytes(bytes(b))
        try:
            tensors = load_run(bad).model.state_dict() if n % 50 == 0 else \
                load_safetensors(bad / MODEL, "model.safetensors", expected)
        except TrainerError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
        else:  # a flip that keeps a valid header must still give the right architecture
            assert {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} == expected
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 0.9 * 3 * header_len, outcomes


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_never_runs(fmt, runs_dir, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    bad = runs_dir / "bad"
    if fmt == "pickle":
        (bad / MODEL).write_bytes(pickle.dumps({"w": MakesMarker(marker)}))
    else:
        torch.save({"w": MakesMarker(marker)}, bad / MODEL)

    with pytest.raises(TrainerError, match="not a safetensors file"):
        load_run(bad)
    assert_one_line_error(cli(capsys, "eval", bad, "--k", "5", "--threads", "1"), "not a safetensors file")
    assert_one_line_error(cli(capsys, "sample", bad, "--out", tmp_path / "s.png"), "not a safetensors file")
    assert not marker.exists(), "the pickle was executed"
    assert_usable(capsys, runs_dir / "good")


def test_pickle_payload_is_real_control(tmp_path):
    """Control: the payload used above would create the marker if it were unpickled."""
    marker = tmp_path / "MARKER"
    assert_pickle_would_touch(pickle.dumps(MakesMarker(marker)), marker)


def test_pickle_through_real_cli_processes(runs_dir, tmp_path):
    """The same, through `python -m trainer eval` and `sample` as separate processes."""
    marker = tmp_path / "MARKER"
    bad = runs_dir / "bad"
    (bad / MODEL).write_bytes(pickle.dumps(MakesMarker(marker)))
    for args in (("eval", bad, "--k", "5", "--threads", "1"), ("sample", bad, "--out", tmp_path / "s.png")):
        assert_one_line_error(cli_process(*args), "not a safetensors file")
    assert not marker.exists()


# -- config.json ----------------------------------------------------------------------------------

def _edit_config(d: Path, edit) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


CONFIGS = {
    "not-json": ("{'data': 'digits',", "not valid JSON"),
    "empty": ("", "not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", "not UTF-8"),
    "a-list": ("[1, 2, 3]", "must hold a JSON object"),
    "deeply-nested": ("[" * 100_000, "not valid JSON"),
    "unknown-arch": (_set("model.arch", "transformer"), "unknown architecture 'transformer'"),
    "python-path-arch": (_set("model.arch", "os.system"), "unknown architecture 'os.system'"),
    "class-path-arch": (_set("model.arch", "trainer.model.MLPVAE"), "unknown architecture"),
    "python-path-likelihood": (_set("model.likelihood", "subprocess.call"), "unknown likelihood"),
    "hydra-target": (_set("_target_", "os.system"), "unknown field(s) _target_"),
    "dunder-field": (_set("model.__class__", "builtins.eval"), "unknown field(s) __class__"),
    "latent-as-string": (_set("model.latent_dim", "2"), "latent_dim has the wrong type (str)"),
    "hidden-as-string": (_set("model.hidden", "32"), "hidden has the wrong type (str)"),
    "epochs-as-bool": (_set("train.epochs", True), "epochs has the wrong type (bool)"),
    "lr-as-list": (_set("train.lr", [0.1]), "lr has the wrong type (list)"),
    "sigma-dec-code": (_set("model.sigma_dec", "__import__('os')"), "sigma_dec must be"),
    "model-not-object": (_set("model", "mlp"), "'model' must be a JSON object"),
    "negative-latent": (_set("model.latent_dim", -3), "latent dim must be between"),
    "data-shape-strings": (_set("data_shape", ["1", "8", "8"]), "data_shape"),
    "data-shape-missing": (_set("data_shape", []), "data_shape is missing"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_gives_one_line_error(case, runs_dir, capsys):
    change, expected = CONFIGS[case]
    bad = runs_dir / "bad"
    if callable(change):
        _edit_config(bad, change)
    elif isinstance(change, bytes):
        (bad / "config.json").write_bytes(change)
    else:
        (bad / "config.json").write_text(change)
    with pytest.raises(TrainerError) as err:
        load_run(bad)
    assert expected in str(err.value) and "config.json" in str(err.value) and "\n" not in str(err.value)
    assert_one_line_error(cli(capsys, "eval", bad, "--k", "5", "--threads", "1"), expected)
    assert_usable(capsys, runs_dir / "good")


def test_missing_config(runs_dir, capsys):
    (runs_dir / "bad" / "config.json").unlink()
    assert_one_line_error(cli(capsys, "eval", runs_dir / "bad"), "missing config.json")


def test_huge_config_is_refused_without_reading_it_all(runs_dir, capsys):
    (runs_dir / "bad" / "config.json").write_bytes(b" " * (11 * 2**20) + b"{}")
    assert_one_line_error(cli(capsys, "eval", runs_dir / "bad"), "larger than 10 MB")


@pytest.mark.parametrize("edit", [
    _set("model.hidden", [65536, 65536, 65536]),  # 2 x 16 GiB of float32 weights if allocated
    _set("data_shape", [1, 100_000, 100_000]),  # a 10^10-pixel image
])
def test_config_claiming_a_huge_model_allocates_nothing(edit, runs_dir, capsys):
    """A config that names an enormous architecture is checked against the file's header
    before any weight is allocated: a shape error, and the process stays small."""
    bad = runs_dir / "bad"
    _edit_config(bad, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(TrainerError, match="does not match the architecture|has shape"):
        load_run(bad)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"
    assert_usable(capsys, runs_dir / "good")


# -- metrics.jsonl ------------------------------------------------------------------------------

def test_missing_metrics_leaves_the_run_usable(runs_dir, capsys):
    bad = runs_dir / "bad"
    (bad / "metrics.jsonl").unlink()
    run = load_run(bad)
    assert run.metrics == []
    r = cli(capsys, "eval", bad, "--k", "5", "--json", "--threads", "1", "--no-quadrature")
    assert r.code == 0, r.stderr


def test_cut_off_last_line_keeps_the_readable_lines(runs_dir):
    bad = runs_dir / "bad"
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    full = [json.loads(line) for line in lines]
    assert len(full) == 2
    (bad / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    assert load_run(bad).metrics == full[:1]


def test_garbage_lines_are_skipped(runs_dir):
    bad = runs_dir / "bad"
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    (bad / "metrics.jsonl").write_bytes(
        lines[0].encode() + b"\n\xff\xfe garbage\n[1, 2]\n" + b"[" * 50_000 + b"\n" + lines[1].encode() + b"\n")
    assert load_run(bad).metrics == [json.loads(line) for line in lines]


def test_append_after_a_cut_off_line_starts_a_fresh_line(tmp_path):
    """A crash that cut the last line must not swallow the next row appended."""
    from trainer.fileio import append_jsonl
    from trainer.runs import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "test_el')
    append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 2})
    assert read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]


# -- optim.safetensors / train_state.json (used by --resume) ------------------------------------------

@pytest.mark.parametrize("case", ["nan-moment", "wrong-shape", "bad-key", "not-safetensors", "from-another-epoch"])
def test_damaged_optimizer_state_refuses_resume_cleanly(case, runs_dir, capsys):
    bad = runs_dir / "bad"
    path = bad / "optim.safetensors"
    t = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()  # the epoch it was saved at: keep it, only the tensors are damaged
    expected = "optim.safetensors"
    if case == "nan-moment":
        t["adam.1.exp_avg"].view(-1)[0] = float("nan")
    elif case == "wrong-shape":
        t["adam.1.exp_avg"] = torch.zeros(3, 3)
    elif case == "bad-key":
        t["adam.x"] = torch.zeros(1)
    elif case == "from-another-epoch":
        meta = {"train_state": '{"epoch": 1, "step": 12}'}
        expected = "the optimizer state does not belong to the saved weights (epoch 2)"
    if case == "not-safetensors":
        path.write_bytes(b"PK\x03\x04 not a checkpoint")
    else:
        save_file(t, path, metadata=meta)
    r = cli(capsys, "fit", "--data", "digits", "--hidden", "32", "--out", bad, "--epochs", "3",
            "--threads", "1", "--resume", "--quiet")
    assert_one_line_error(r, expected)
    assert load_run(bad).metrics == load_run(runs_dir / "good").metrics  # nothing appended


def test_damaged_train_state_refuses_resume_cleanly(runs_dir, capsys):
    bad = runs_dir / "bad"
    (bad / "train_state.json").write_text('{"epoch": "two"}')
    r = cli(capsys, "fit", "--data", "digits", "--hidden", "32", "--out", bad, "--epochs", "3",
            "--threads", "1", "--resume", "--quiet")
    assert_one_line_error(r, "train_state.json is damaged")
