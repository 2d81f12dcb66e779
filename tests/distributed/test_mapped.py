"""Data larger than memory: a .npy read from disk a batch at a time (trainer.mapped).

The rows read are exactly the values the in-memory path holds; a run trains on the same
numbers either way; and a run completes under a memory limit that loading the file whole
cannot fit in."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.distributed.conftest import assert_weights_close, reference_config, trainer_env, weights
from trainer import TrainerError, fit, load_dataset, runs
from trainer.mapped import MappedRows

MEMLIMIT = ROOT / "tests" / "distributed" / "memlimit.py"


@pytest.fixture(scope="module")
def images_npy(tmp_path_factory):
    """uint8 RGB images, channels last (N, H, W, 3): the trainer moves the channels first
    and divides by 255."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(301, 6, 5, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("npy") / "images.npy"
    np.save(path, x)
    return path


def test_mapped_rows_hold_the_in_memory_values(images_npy):
    mapped, memory = load_dataset(f"{images_npy}:mmap=1", 3), load_dataset(f"{images_npy}:mmap=0", 3)
    assert isinstance(mapped.x_train, MappedRows) and isinstance(memory.x_train, torch.Tensor)
    assert mapped.shape == memory.shape == (3, 6, 5) and mapped.is_image
    for a, b in ((mapped.x_train, memory.x_train), (mapped.x_test, memory.x_test)):
        assert len(a) == len(b) and tuple(a.shape) == tuple(b.shape)
        idx = torch.randperm(len(b), generator=torch.Generator().manual_seed(1))[:50]  # unsorted
        assert torch.equal(a.index_select(0, idx), b.index_select(0, idx))
        assert torch.equal(a[7:40], b[7:40])
        assert float(a.min()) == float(b.min()) and float(a.max()) == float(b.max())
        assert np.array_equal(a.numpy(), b.numpy())


def test_column_stats_match_torch(images_npy, monkeypatch):
    import trainer.mapped as mapped_module

    monkeypatch.setattr(mapped_module, "CHUNK_BYTES", 1000)  # many chunks: the merge is exercised
    x = load_dataset(f"{images_npy}:mmap=1", 0).x_train
    full = load_dataset(f"{images_npy}:mmap=0", 0).x_train.reshape(len(x), -1).double()
    mean, var, rows = x.column_stats(max_rows=64)
    torch.testing.assert_close(mean.double(), full.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var, full.var(0, unbiased=False), rtol=1e-9, atol=1e-12)
    assert torch.equal(rows.double(), full[:: len(x) // 64][:64])  # initial_sigma_dec's rows


def test_the_threshold_picks_the_path(images_npy, monkeypatch):
    size = images_npy.stat().st_size
    monkeypatch.setenv("VAE_MMAP_BYTES", str(size - 1))
    assert isinstance(load_dataset(str(images_npy), 0).x_train, MappedRows)
    assert isinstance(load_dataset(f"{images_npy}:mmap=0", 0).x_train, torch.Tensor)  # the option wins
    monkeypatch.setenv("VAE_MMAP_BYTES", str(size))
    assert isinstance(load_dataset(str(images_npy), 0).x_train, torch.Tensor)
    monkeypatch.delenv("VAE_MMAP_BYTES")
    assert isinstance(load_dataset(str(images_npy), 0).x_train, torch.Tensor)  # 2 GiB by default


def test_bad_settings_and_bad_values_are_one_line_errors(images_npy, tmp_path, monkeypatch):
    with pytest.raises(TrainerError, match="mmap=.*must be 0 .* or 1"):
        load_dataset(f"{images_npy}:mmap=yes", 0)
    monkeypatch.setenv("VAE_MMAP_BYTES", "lots")
    with pytest.raises(TrainerError, match="VAE_MMAP_BYTES"):
        load_dataset(str(images_npy), 0)
    monkeypatch.delenv("VAE_MMAP_BYTES")
    x = np.zeros((50, 4), np.float32)
    x[37, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(TrainerError, match="nan.npy: the data contains NaN"):
        load_dataset(f"{tmp_path / 'nan.npy'}:mmap=1", 0)
    np.save(tmp_path / "big.npy", np.full((50, 4, 4), 300, np.int16))
    with pytest.raises(TrainerError, match="integer images must have values in 0..255"):
        load_dataset(f"{tmp_path / 'big.npy'}:mmap=1", 0)


def test_training_from_disk_gives_the_in_memory_numbers(digits_npy, tmp_path):
    """Same batches, same values; only the data mean for the initial output bias is summed
    in another order (chunks, float64), so weights agree to float rounding."""
    cfg_disk, cfg_memory = reference_config(), reference_config()
    cfg_disk.data, cfg_memory.data = f"{digits_npy}:mmap=1", f"{digits_npy}:mmap=0"
    cfg_disk.train.epochs = cfg_memory.train.epochs = 1
    fit(cfg_disk, tmp_path / "disk")
    fit(cfg_memory, tmp_path / "memory")
    assert_weights_close(weights(tmp_path / "disk"), weights(tmp_path / "memory"), atol=1e-5)
    a, b = runs.read_metrics(tmp_path / "disk")[0], runs.read_metrics(tmp_path / "memory")[0]
    for k in ("train_elbo", "test_elbo", "sigma_dec"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k


# -- a memory limit --------------------------------------------------------------------------------

def _write_npy(path, n: int, d: int = 512) -> None:
    """Gaussian rows (n, d) float32, written in chunks (never whole in this process either)."""
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for i in range(0, n, 8192):
        m = min(8192, n - i)
        a[i:i + m] = rng.standard_normal((m, d), dtype=np.float32)
    a.flush()
    del a


def _limited(limit: int, *args) -> tuple[dict, list[str], str]:
    """`python -m trainer ARGS` under RLIMIT_DATA = limit (0: none): memlimit.py's report
    (exit status, peak data size), the command's own stdout lines, and stderr."""
    # glibc malloc made steady, so that the calibration run and the limited runs are measured
    # alike: one arena for all threads (no per-thread 64 MiB reservations, which one run makes and
    # the next may not), and every block of 128 KiB or more its own mapping, returned when freed
    # (by default the threshold grows, and large freed buffers stay in a fragmented heap). Peaks
    # of the .npy runs measured on the development machine, 4 times each: small fit 264-265 MiB,
    # large fit 288 MiB; with glibc's defaults 270-274 and 306-341 MiB (3 times). With one arena
    # alone the large limited run once failed to allocate.
    p = subprocess.run([sys.executable, str(MEMLIMIT), str(limit), *map(str, args)], cwd=ROOT,
                       env=trainer_env(MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="131072"),
                       capture_output=True, text=True, timeout=600)
    lines = p.stdout.strip().splitlines()
    assert lines, p.stderr
    return json.loads(lines[-1]), lines[:-1], p.stderr


@pytest.mark.slow
def test_a_file_larger_than_the_memory_left_trains_and_evaluates(tmp_path):
    """Measure what import + training + evaluation need on a small file (peak data size,
    RLIMIT_DATA's measure), allow that plus a margin, and train from a file larger than the
    margin: read in batches it completes; loaded whole it cannot under the same limit."""
    fit_args = ["--epochs", "1", "--batch-size", "1024", "--hidden", "16", "--threads", "1", "--quiet"]
    _write_npy(tmp_path / "small.npy", 4096)
    calibration, _, err = _limited(0, "fit", "--data", f"{tmp_path / 'small.npy'}:mmap=1", "--out",
                                tmp_path / "small", *fit_args)
    assert calibration["rc"] == 0, err
    evaluation, _, err = _limited(0, "eval", tmp_path / "small", "--k", "4", "--json",
                                "--threads", "1", "--no-quadrature")  # the grid is not what is measured
    assert evaluation["rc"] == 0, err
    need = max(calibration["peak_data_bytes"], evaluation["peak_data_bytes"])
    margin = 96 << 20  # chunk buffers and batches of the larger file; far below its size
    limit = need + margin

    big = tmp_path / "big.npy"
    _write_npy(big, 98_304)  # 192 MiB of float32
    assert big.stat().st_size > 2 * margin

    report, _, err = _limited(limit, "fit", "--data", f"{big}:mmap=1", "--out", tmp_path / "disk", *fit_args)
    assert report["rc"] == 0, err
    assert report["peak_data_bytes"] <= limit
    rows = runs.read_metrics(tmp_path / "disk")
    assert len(rows) == 1 and np.isfinite(rows[0]["test_elbo"])
    assert json.loads((tmp_path / "disk" / "config.json").read_text())["data_shape"] == [512]
    # test evaluation and log p(x) in chunks, under the same limit
    report, out, err = _limited(limit, "eval", tmp_path / "disk", "--k", "4", "--json",
                                "--threads", "1", "--no-quadrature")  # the grid is not what is measured
    assert report["rc"] == 0, err
    result = json.loads(out[-1])
    assert result["n"] == round(98_304 * 0.2) and np.isfinite(result["log_px"])  # the whole test split

    # the same file loaded whole does not fit: the limit is real
    report, _, err = _limited(limit, "fit", "--data", f"{big}:mmap=0", "--out", tmp_path / "memory", *fit_args)
    assert report["rc"] != 0
    assert "memory" in err.lower()
