"""A folder of images larger than memory: indexed (each file's header), decoded a batch at
a time (trainer.mapped.ImageFiles under MappedRows), as a large .npy is read.

Real PNG/JPEG files on disk, real training: the rows read are exactly the values the
in-memory path holds; one process, two processes (torchrun) and a run under a memory limit
train from such a folder; a file that cannot be decoded is a one-line error naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.distributed.conftest import assert_weights_close, run_trainer, weights
from tests.distributed.test_mapped import _limited
from trainer import RunConfig, TrainerError, fit, load_dataset, runs
from trainer.mapped import ImageFiles, MappedRows


def _gray(rng, n: int, h: int, w: int, level: int) -> np.ndarray:
    """n gray images around `level`: a bright square at a random place, plus noise."""
    x = np.clip(rng.normal(level, 20, size=(n, h, w)), 0, 255)
    for img in x:
        i, j = rng.integers(0, h - 2), rng.integers(0, w - 2)
        img[i:i + 3, j:j + 3] = 255
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory):
    """300 gray 8x10 PNGs in two subfolders (labels "dark" 0, "light" 1)."""
    root = tmp_path_factory.mktemp("gray") / "imgs"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("light", 190)):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(_gray(rng, 150, 8, 10, level)):
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """RGB, RGBA, gray and palette PNGs and JPEGs of several sizes (no subfolders): read as
    RGB, resized with a size option."""
    root = tmp_path_factory.mktemp("mixed") / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        h, w = 9 + i % 4, 11 + i % 3
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"rgb{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8)).save(root / f"rgba{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (w, h), dtype=np.uint8)).save(root / f"gray{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, h, 3), dtype=np.uint8)).convert("P").save(root / f"pal{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (w, w, 3), dtype=np.uint8)).save(root / f"photo{i:02d}.jpg", quality=85)
    return root


def _same_values(lazy, memory):
    assert isinstance(lazy.x_train, MappedRows) and isinstance(memory.x_train, torch.Tensor)
    assert isinstance(lazy.x_train.array, ImageFiles)
    assert lazy.shape == memory.shape and lazy.is_image and memory.is_image
    assert lazy.label_names == memory.label_names
    for ya, yb in ((lazy.y_train, memory.y_train), (lazy.y_test, memory.y_test)):
        assert (ya is None and yb is None) or np.array_equal(ya, yb)
    for a, b in ((lazy.x_train, memory.x_train), (lazy.x_test, memory.x_test)):
        assert len(a) == len(b) and tuple(a.shape) == tuple(b.shape)
        idx = torch.randperm(len(b), generator=torch.Generator().manual_seed(1))[:40]  # unsorted
        assert torch.equal(a.index_select(0, idx), b.index_select(0, idx))
        assert torch.equal(a[3:30], b[3:30])
        assert float(a.min()) == float(b.min()) and float(a.max()) == float(b.max())
        whole = a.numpy()
        assert whole.dtype == np.float32 and whole.tobytes() == b.numpy().tobytes()  # bit for bit


@pytest.mark.parametrize("option", ["", ",size=6", ",size=5x7"])
def test_lazy_gray_folder_holds_the_in_memory_values(gray_folder, option):
    lazy = load_dataset(f"{gray_folder}:mmap=1{option}", 3)
    memory = load_dataset(f"{gray_folder}:mmap=0{option}", 3)
    _same_values(lazy, memory)
    assert lazy.label_names == ["folder"] and set(np.unique(lazy.y_train)) == {0.0, 1.0}
    assert lazy.shape == {"": (1, 8, 10), ",size=6": (1, 6, 6), ",size=5x7": (1, 5, 7)}[option]


@pytest.mark.parametrize("size", ["8", "6x10"])
def test_lazy_rgb_folder_resized_holds_the_in_memory_values(mixed_folder, size):
    lazy = load_dataset(f"{mixed_folder}:size={size},mmap=1", 0)
    memory = load_dataset(f"{mixed_folder}:size={size},mmap=0", 0)
    _same_values(lazy, memory)
    assert lazy.y_train is None and lazy.shape[0] == 3 and len(lazy.x_train) + len(lazy.x_test) == 200


def test_the_folder_is_indexed_not_read(gray_folder, monkeypatch):
    """Loading reads headers only; a batch decodes just its own images."""
    decoded = []
    original = ImageFiles.decode
    monkeypatch.setattr(ImageFiles, "decode", lambda self, i: decoded.append(i) or original(self, i))
    ds = load_dataset(f"{gray_folder}:mmap=1", 0)
    assert decoded == []
    ds.x_train.index_select(0, torch.tensor([5, 0, 17]))
    assert len(decoded) == 3 and decoded == sorted(decoded)  # forward through the file list
    load_dataset(f"{gray_folder}:mmap=0", 0)
    assert len(decoded) == 3 + 300  # loaded whole: every image once, through the same decoder


def test_the_decoded_size_picks_the_path(gray_folder, monkeypatch):
    decoded_bytes = 300 * 1 * 8 * 10  # N*C*H*W, not the files' size on disk
    monkeypatch.setenv("VAE_MMAP_BYTES", str(decoded_bytes - 1))
    assert isinstance(load_dataset(str(gray_folder), 0).x_train, MappedRows)
    assert isinstance(load_dataset(f"{gray_folder}:mmap=0", 0).x_train, torch.Tensor)  # the option wins
    monkeypatch.setenv("VAE_MMAP_BYTES", str(300 * 4 * 4))  # the size after resizing counts
    assert isinstance(load_dataset(f"{gray_folder}:size=5", 0).x_train, MappedRows)
    assert isinstance(load_dataset(f"{gray_folder}:size=4", 0).x_train, torch.Tensor)
    monkeypatch.setenv("VAE_MMAP_BYTES", str(decoded_bytes))
    assert isinstance(load_dataset(str(gray_folder), 0).x_train, torch.Tensor)
    monkeypatch.delenv("VAE_MMAP_BYTES")
    assert isinstance(load_dataset(str(gray_folder), 0).x_train, torch.Tensor)  # 2 GiB by default
    with pytest.raises(TrainerError, match="mmap='yes' must be 0"):
        load_dataset(f"{gray_folder}:mmap=yes", 0)


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    rng = np.random.default_rng(2)
    good = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(6)]
    # a header that is not an image: refused while indexing, before any training
    broken = tmp_path / "broken"
    broken.mkdir()
    for i, img in enumerate(good):
        Image.fromarray(img).save(broken / f"{i}.png")
    (broken / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for mmap in ("0", "1"):
        with pytest.raises(TrainerError, match=r"x\.png: cannot read the image"):
            load_dataset(f"{broken}:mmap={mmap}", 0)
    # different sizes without size=: refused while indexing
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(good[0]).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(TrainerError, match=r"different sizes \(8x8 and 9x8\).*size="):
        load_dataset(f"{mixed}:mmap=1", 0)
    # a good header, pixels cut off: refused when the image is decoded
    cut = tmp_path / "cut"
    cut.mkdir()
    for i, img in enumerate(good):
        Image.fromarray(img).save(cut / f"{i}.png")
    data = _png_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (cut / "t.png").write_bytes(data[:60])
    with Image.open(cut / "t.png") as im:
        assert im.size == (8, 8)  # the header alone reads fine
    with pytest.raises(TrainerError, match=r"t\.png: cannot read the image") as whole:
        load_dataset(f"{cut}:mmap=0", 0)
    ds = load_dataset(f"{cut}:mmap=1", 0)  # indexed: nothing decoded yet
    with pytest.raises(TrainerError, match=r"t\.png: cannot read the image") as lazy:
        ds.x_train.numpy(), ds.x_test.numpy()  # t.png is in one of the splits
    assert "\n" not in str(whole.value) and "\n" not in str(lazy.value)
    # a file replaced by one of another size after it was indexed
    (cut / "t.png").write_bytes(_png_bytes(np.zeros((8, 8), np.uint8)))
    ds = load_dataset(f"{cut}:mmap=1", 0)
    (cut / "t.png").write_bytes(_png_bytes(np.zeros((9, 8), np.uint8)))
    with pytest.raises(TrainerError, match=r"t\.png: the image is now 9x8 pixels, it was 8x8"):
        ds.x_train.numpy(), ds.x_test.numpy()


def test_the_cli_reports_a_file_that_fails_to_decode_during_training(tmp_path, capsys):
    """Found only when training reads it: exit status 2 and one line naming the file."""
    import signal

    from trainer.__main__ import main

    folder = tmp_path / "cut"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "zz.png").write_bytes(_png_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8))[:60])
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = main(["fit", "--data", f"{folder}:mmap=1", "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--threads", "1", "--quiet"])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "zz.png: cannot read the image" in lines[0] and "Traceback" not in err


# -- training --------------------------------------------------------------------------------------

FOLDER_ARGS = ["--hidden", "32", "--batch-size", "50", "--epochs", "2", "--threads", "1"]


def _config(data: str) -> RunConfig:
    """FOLDER_ARGS as a RunConfig."""
    cfg = RunConfig(data=data)
    cfg.model.hidden = [32]
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads = 50, 2, 1
    return cfg


@pytest.fixture(scope="module")
def in_memory_run(gray_folder, tmp_path_factory):
    """The reference: the folder loaded whole, trained by one process (this one)."""
    out = tmp_path_factory.mktemp("folder-ref") / "memory"
    assert fit(_config(f"{gray_folder}:mmap=0"), out) == "done"
    return out


def test_training_from_a_lazy_folder_gives_the_in_memory_numbers(gray_folder, in_memory_run, tmp_path):
    """Same batches, same values; only the data mean for the initial output bias is summed
    in another order (chunks, float64), so weights agree to float rounding."""
    assert fit(_config(f"{gray_folder}:mmap=1"), tmp_path / "lazy") == "done"
    assert_weights_close(weights(tmp_path / "lazy"), weights(in_memory_run), atol=1e-5)
    for a, b in zip(runs.read_metrics(tmp_path / "lazy"), runs.read_metrics(in_memory_run), strict=True):
        for k in ("train_elbo", "test_elbo", "sigma_dec"):
            assert a[k] == pytest.approx(b[k], rel=1e-6), k


def test_two_processes_train_from_a_lazy_folder(gray_folder, in_memory_run, tmp_path):
    """torchrun, 2 processes (gloo), each indexing the folder and decoding its share of
    each batch: the numbers of one process with the folder in memory."""
    out = tmp_path / "two"
    p = run_trainer("fit", "--data", f"{gray_folder}:mmap=1", *FOLDER_ARGS, "--out", out, "--nproc", "2")
    assert p.code == 0, p.stderr
    assert json.loads((out / "config.json").read_text())["train"]["world_size"] == 2
    assert runs.read_status_dead_as_failed(out)["state"] == "done"
    assert_weights_close(weights(out), weights(in_memory_run), atol=1e-5)
    for a, b in zip(runs.read_metrics(out), runs.read_metrics(in_memory_run), strict=True):
        for k in ("train_elbo", "test_elbo", "sigma_dec"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), k


# -- a memory limit --------------------------------------------------------------------------------

def _write_folder(root, n: int, side: int = 256) -> None:
    """n gray side x side PNGs (a gradient shifted per image: small files, large decoded)."""
    root.mkdir(parents=True)
    ramp = np.add.outer(np.arange(side), np.arange(side))
    for i in range(n):
        Image.fromarray(((ramp + 3 * i) % 256).astype(np.uint8)).save(root / f"{i:05d}.png", compress_level=1)


@pytest.mark.slow
def test_a_folder_larger_than_the_memory_left_trains_and_evaluates(tmp_path):
    """As for a large .npy (test_mapped.py): measure what import + training + evaluation
    need on a small folder (peak data size under RLIMIT_DATA, tests/distributed/memlimit.py),
    allow that plus a margin, and train from a folder whose images decoded are larger than
    the margin: read in batches it completes; loaded whole it cannot under the same limit.

    Both folders give 55 test images and at least 1024 training images (the rows
    column_stats samples for sigma_dec), so every buffer but the data itself is the same size."""
    fit_args = ["--epochs", "1", "--batch-size", "64", "--hidden", "16", "--threads", "1", "--quiet"]
    _write_folder(tmp_path / "small", 1100)
    calibration, _, err = _limited(0, "fit", "--data", f"{tmp_path / 'small'}:mmap=1,test=0.05", "--out",
                                   tmp_path / "small-run", *fit_args)
    assert calibration["rc"] == 0, err
    evaluation, _, err = _limited(0, "eval", tmp_path / "small-run", "--k", "4", "--json",
                                "--threads", "1", "--no-quadrature")  # the grid is not what is measured
    assert evaluation["rc"] == 0, err
    need = max(calibration["peak_data_bytes"], evaluation["peak_data_bytes"])
    # Batches and chunk buffers are the same size for both folders: with _limited's steady
    # malloc the lazy run peaked at its calibration's size (731 MiB both, twice). The margin is
    # generous because before that (glibc's per-thread arenas) 32 MiB once failed in CI.
    margin = 160 << 20
    limit = need + margin

    big = tmp_path / "big"
    _write_folder(big, 2200)
    decoded = 2200 * 256 * 256  # uint8 N*C*H*W; the trainer would hold 4x that as float32
    # Loaded whole, the float32 data (550 MiB) must not fit in what the limit leaves, with room
    # to spare: with 128x128 images (140 MiB) and glibc's default arenas the whole load once fitted.
    assert 4 * decoded > margin + 256 * 2**20

    report, _, err = _limited(limit, "fit", "--data", f"{big}:mmap=1,test=0.025", "--out", tmp_path / "lazy",
                              *fit_args)
    assert report["rc"] == 0, err
    assert report["peak_data_bytes"] <= limit
    lazy_peak = report["peak_data_bytes"]
    rows = runs.read_metrics(tmp_path / "lazy")
    assert len(rows) == 1 and np.isfinite(rows[0]["test_elbo"])
    assert json.loads((tmp_path / "lazy" / "config.json").read_text())["data_shape"] == [1, 256, 256]
    report, out, err = _limited(limit, "eval", tmp_path / "lazy", "--k", "4", "--json", "--threads", "1",
                                "--no-quadrature")
    assert report["rc"] == 0, err
    assert json.loads(out[-1])["n"] == 55 and np.isfinite(json.loads(out[-1])["log_px"])

    # the same folder loaded whole does not fit: the limit is real
    whole, _, err = _limited(limit, "fit", "--data", f"{big}:mmap=0,test=0.025", "--out", tmp_path / "memory",
                             *fit_args)
    print(f"need {need >> 20} MiB, limit {limit >> 20} MiB, decoded {decoded >> 20} MiB, lazy fit peak "
          f"{lazy_peak >> 20} MiB, whole: rc {whole['rc']}, peak {whole['peak_data_bytes'] >> 20} MiB")
    assert whole["rc"] != 0
    assert "memory" in err.lower()
