"""Data sets: the built-ins and each file format a user can bring, read from real files on
disk; the split; labels staying with their samples; the data-spec parser and the config
loader under random input (only TrainerError, never another exception)."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from trainer import TrainerError, load_dataset
from trainer import formats as formats_module
from trainer.config import RunConfig
from trainer.data import DATASETS, parse_spec, render_shapes
from trainer.likelihoods import LIKELIHOODS
from trainer.examples import linear_gaussian_entropy


def all_rows(ds):
    """x of both splits with their labels, sorted back into one array by the first label."""
    x = torch.cat([ds.x_train, ds.x_test]).reshape(len(ds.x_train) + len(ds.x_test), -1).numpy()
    y = np.concatenate([ds.y_train, ds.y_test]) if ds.y_train is not None else None
    return x, y


def assert_split(ds, n: int, test_fraction: float = 0.2):
    assert len(ds.x_train) + len(ds.x_test) == n
    assert len(ds.x_test) == round(n * test_fraction)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    if ds.y_train is not None:
        assert len(ds.y_train) == len(ds.x_train) and len(ds.y_test) == len(ds.x_test)


# -- the split ------------------------------------------------------------------------------

def test_split_is_deterministic_from_the_seed_and_disjoint():
    a, b, c = load_dataset("gmm2d:n=500", 0), load_dataset("gmm2d:n=500", 0), load_dataset("gmm2d:n=500", 1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_test, c.x_test)
    rows_a = {tuple(r) for r in torch.cat([a.x_train, a.x_test]).tolist()}
    assert len(rows_a) == 500  # every sample once: no overlap, nothing lost
    assert rows_a == {tuple(r) for r in torch.cat([c.x_train, c.x_test]).tolist()}


def test_test_fraction_option():
    ds = load_dataset("gmm2d:n=1000,test=0.1", 0)
    assert (len(ds.x_train), len(ds.x_test)) == (900, 100)


# -- built-ins ------------------------------------------------------------------------------

def test_digits():
    ds = load_dataset("digits", 0)
    assert_split(ds, 1797)
    assert ds.shape == (1, 8, 8) and ds.is_image and ds.label_names == ["digit"]
    x, y = all_rows(ds)
    assert x.min() == 0 and x.max() == 1  # 0..16 scaled to [0, 1]
    assert set(np.unique(y)) == set(range(10)) and y.shape == (1797, 1)
    # labels stay with their images: sklearn's first image is a 0 of known pixels
    from sklearn.datasets import load_digits

    ref = load_digits()
    i = int(np.argmin(np.abs(x - ref.data[0] / 16).sum(1)))
    assert np.allclose(x[i], ref.data[0] / 16) and y[i, 0] == ref.target[0]


def test_shapes_labels_are_the_factors_that_drew_each_image():
    ds = load_dataset("shapes:n=300,size=24", 0)
    assert_split(ds, 300)
    assert ds.shape == (1, 24, 24) and ds.is_image
    assert ds.label_names == ["shape", "scale", "rotation", "x", "y"]
    x, y = all_rows(ds)
    assert set(np.unique(y[:, 0])) == {0, 1, 2}
    assert (0.12 <= y[:, 1]).all() and (y[:, 1] <= 0.25).all()
    assert set(np.unique(x)) <= {0.0, 1.0}  # binary sprites
    redrawn = render_shapes(y[:, 0].astype(int), y[:, 1], y[:, 2], y[:, 3], y[:, 4], 24)
    assert np.array_equal(redrawn.reshape(300, -1), x)  # each label row draws its image
    # and the factors mean what they say: the centroid is at (x, y), the area grows with scale
    grid = (np.arange(24) + 0.5) / 24
    img = x.reshape(300, 24, 24)
    mass = img.sum((1, 2))
    cx, cy = (img.sum(1) * grid).sum(1) / mass, (img.sum(2) * grid).sum(1) / mass
    squares = y[:, 0] == 0  # symmetric: centroid = centre
    assert np.abs(cx - y[:, 3])[squares].max() < 0.03 and np.abs(cy - y[:, 4])[squares].max() < 0.03
    assert np.corrcoef(mass[squares], y[squares, 1])[0, 1] > 0.9


def test_gmm2d_and_its_exact_density():
    ds = load_dataset("gmm2d:k=3,n=2000,sigma=0.4,radius=2", 0)
    assert_split(ds, 2000)
    assert ds.shape == (2,) and not ds.is_image and ds.label_names == ["component"]
    x, y = all_rows(ds)
    assert set(np.unique(y)) == {0, 1, 2}
    angles = 2 * np.pi * np.arange(3) / 3
    means = torch.tensor(2 * np.stack([np.cos(angles), np.sin(angles)], 1))
    mix = MixtureSameFamily(Categorical(torch.full((3,), 1 / 3, dtype=torch.float64)),
                            Independent(Normal(means, 0.4), 1))
    xt = torch.as_tensor(x)
    torch.testing.assert_close(ds.exact_log_px(xt).double(), mix.log_prob(xt.double()), rtol=1e-5, atol=1e-5)
    # each point sits near the mean of its labelled component
    dist = np.linalg.norm(x - means.numpy()[y[:, 0].astype(int)], axis=1)
    assert np.median(dist) < 0.6


def test_linear_gaussian_and_its_entropy():
    ds = load_dataset("linear-gaussian:d=5,sigma=0.3,n=20000", 0)
    assert_split(ds, 20000)
    assert ds.shape == (5,) and ds.y_train is None and ds.exact_log_px is not None
    x = torch.cat([ds.x_train, ds.x_test])
    assert abs(float(x.std(0).mean()) - 0.3) < 0.01
    lp = ds.exact_log_px(x).double()
    se = float(lp.std()) / math.sqrt(len(lp))
    assert abs(float(lp.mean()) + linear_gaussian_entropy(5, 0.3)) < 4 * se  # mean log p = -entropy


def test_the_registry_says_which_built_ins_know_their_exact_log_px():
    for name, builtin in DATASETS.items():
        spec = f"{name}:n=50" if any(o.key == "n" for o in builtin.options) else name
        assert (load_dataset(spec, 0).exact_log_px is not None) == builtin.exact_log_px, name


# -- the user's files ---------------------------------------------------------------------------

def test_npz_with_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float64)
    x[:, 0] = np.arange(50)  # a column that identifies the row
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 7)
    ds = load_dataset(str(tmp_path / "d.npz"), 0)
    assert_split(ds, 50)
    assert ds.shape == (6,) and not ds.is_image and ds.label_names == ["label"]
    xs, ys = all_rows(ds)
    assert np.array_equal(ys[:, 0], xs[:, 0] % 7)  # labels stayed with their rows
    assert np.allclose(np.sort(xs[:, 1]), np.sort(x[:, 1].astype(np.float32)))  # kept in its own units


def test_npz_of_uint8_images_channels_last_is_scaled_and_transposed(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(20, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=x)
    ds = load_dataset(str(tmp_path / "img.npz"), 0)
    assert ds.shape == (3, 10, 12) and ds.is_image and ds.y_train is None
    got = torch.cat([ds.x_train, ds.x_test])
    expected = torch.tensor(np.moveaxis(x, -1, 1) / 255.0, dtype=torch.float32)
    assert {tuple(r) for r in got.reshape(20, -1).tolist()} == {tuple(r) for r in expected.reshape(20, -1).tolist()}


def test_npy(tmp_path):
    x = np.random.default_rng(2).random((30, 1, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"), 0)
    assert_split(ds, 30)
    assert ds.shape == (1, 5, 5) and ds.is_image and ds.y_train is None
    got = torch.cat([ds.x_train, ds.x_test]).reshape(30, -1)
    assert sorted(got[:, 0].tolist()) == sorted(x.reshape(30, -1)[:, 0].tolist())  # float data kept as is


def test_csv_without_header(tmp_path):
    (tmp_path / "d.csv").write_text("".join(f"{i},{i * 0.5},{-i}\n" for i in range(20)))
    ds = load_dataset(str(tmp_path / "d.csv"), 0)
    assert_split(ds, 20)
    assert ds.shape == (3,) and ds.y_train is None
    x, _ = all_rows(ds)
    assert sorted(x[:, 0].tolist()) == list(range(20)) and np.allclose(x[:, 1], x[:, 0] * 0.5)


def test_csv_with_header_and_label_column(tmp_path):
    rows = ["a,label,b"] + [f"{i},{'cat' if i % 2 else 'dog'},{i * 2}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(tmp_path / "d.csv"), 0)
    assert ds.shape == (2,) and ds.label_names == ["label"]
    x, y = all_rows(ds)
    assert np.allclose(x[:, 1], 2 * x[:, 0])  # the label column is not a feature
    assert np.array_equal(y[:, 0], np.where(x[:, 0] % 2 == 1, 0, 1))  # cat = 0, dog = 1 (sorted)


def test_csv_label_column_by_option(tmp_path):
    (tmp_path / "d.csv").write_text("".join(f"{i},{i % 3},{i + 100}\n" for i in range(15)))
    for spec in (f"{tmp_path / 'd.csv'}:label=1", f"{tmp_path / 'd.csv'}:label=-2"):
        ds = load_dataset(spec, 0)
        x, y = all_rows(ds)
        assert ds.shape == (2,) and np.array_equal(y[:, 0], x[:, 0] % 3) and np.allclose(x[:, 1], x[:, 0] + 100)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_png_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(3)
    for cls, value in (("cats", 40), ("dogs", 200)):
        for i in range(4):
            write_png(tmp_path / "imgs" / cls / f"{i}.png", np.full((10, 12), value, np.uint8) + rng.integers(0, 5, (10, 12)).astype(np.uint8))
    ds = load_dataset(str(tmp_path / "imgs"), 0)
    assert_split(ds, 8)
    assert ds.shape == (1, 10, 12) and ds.is_image and ds.label_names == ["folder"]
    x, y = all_rows(ds)
    assert np.array_equal(y[:, 0], (x.mean(1) > 0.5).astype(float))  # cats = 0 (dark), dogs = 1 (bright)
    assert 0 <= x.min() and x.max() <= 1


def test_image_folder_resized_with_size_option_and_rgb(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", np.zeros((20, 30, 3), np.uint8))
    write_png(tmp_path / "imgs" / "b.png", np.full((16, 16, 3), 255, np.uint8))
    Image.fromarray(np.full((9, 9, 3), 128, np.uint8)).save(tmp_path / "imgs" / "c.jpg")
    ds = load_dataset(f"{tmp_path / 'imgs'}:size=8", 0)
    assert ds.shape == (3, 8, 8) and ds.y_train is None
    means = sorted(round(float(v), 1) for v in torch.cat([ds.x_train, ds.x_test]).mean((1, 2, 3)))
    assert means == [0.0, 0.5, 1.0]
    ds = load_dataset(f"{tmp_path / 'imgs'}:size=6x10", 0)
    assert ds.shape == (3, 6, 10)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_with_labels_beside_them(tmp_path, gz):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 40).astype(np.uint8)
    images = (labels[:, None, None] * 25 + np.zeros((40, 6, 7), np.uint8)).astype(np.uint8)  # brightness = label
    suffix = ".gz" if gz else ""
    write = (lambda p, b: gzip.open(p, "wb").write(b)) if gz else (lambda p, b: p.write_bytes(b))
    write(tmp_path / f"train-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    ds = load_dataset(str(tmp_path / f"train-images-idx3-ubyte{suffix}"), 0)
    assert_split(ds, 40)
    assert ds.shape == (1, 6, 7) and ds.is_image and ds.label_names == ["label"]
    x, y = all_rows(ds)
    assert np.allclose(x[:, 0], y[:, 0] * 25 / 255, atol=1e-6)  # labels stayed with their images


def test_idx_without_a_labels_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 4, 4), np.uint8)))
    ds = load_dataset(str(tmp_path / "t10k-images-idx3-ubyte"), 0)
    assert ds.shape == (1, 4, 4) and ds.y_train is None


def test_bernoulli_is_checked_on_both_splits():
    """A Bernoulli likelihood needs values in [0, 1] in every sample, held-out ones too."""
    ds = load_dataset("digits", 0)
    LIKELIHOODS["bernoulli"].check_data(ds)
    ds.x_test = ds.x_test.clone()
    ds.x_test[0, 0, 0, 0] = 1.5
    with pytest.raises(TrainerError, match=r"bernoulli needs values in \[0, 1\]"):
        LIKELIHOODS["bernoulli"].check_data(ds)


# -- the parser and the config loader under random input ------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_parse_spec_never_raises_anything_but_trainer_error(spec):
    try:
        name, options = parse_spec(spec)
    except TrainerError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(name, str) and name and all(isinstance(v, str) for v in options.values())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["k", "n", "sigma", "radius", "seed", "test", "bogus"]),
                       st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_subnormal=False).map(str),
                                 st.text(alphabet="0123456789.e-+xnaif", max_size=8)),
                       max_size=4))
def test_builtin_options_never_raise_anything_but_trainer_error(options):
    """gmm2d with random option values: loads (small n only, to stay fast) or TrainerError."""
    if "n" in options:
        options["n"] = options["n"] if options["n"].lstrip("-").isdigit() and int(options["n"]) < 3000 else "x"
    spec = "gmm2d:" + ",".join(f"{k}={v}" for k, v in options.items() if v)
    try:
        ds = load_dataset(spec, 0)
    except TrainerError as e:
        assert "\n" not in str(e)
        return
    assert torch.isfinite(ds.x_train).all()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**400, 10**400) | st.floats(allow_subnormal=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
config_like = st.fixed_dictionaries({}, optional={
    "data": json_values,
    "data_shape": json_values | st.lists(st.integers(-3, 3), max_size=3),
    "versions": json_values,
    "model": st.dictionaries(st.sampled_from(["arch", "hidden", "latent_dim", "likelihood", "sigma_dec",
                                              "conv_channels", "other"]), json_values, max_size=4),
    "train": st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "beta", "kl_warmup", "mc_samples",
                                              "seed", "device", "threads"]), json_values, max_size=4),
})


@settings(max_examples=150, deadline=None)
@given(config_like | json_values)
def test_config_from_any_json_is_a_valid_config_or_trainer_error(raw):
    raw = json.loads(json.dumps(raw))  # exactly what json.loads of a config.json could give
    try:
        cfg = RunConfig.from_dict(raw)
    except TrainerError as e:
        assert "\n" not in str(e)
        return
    cfg.validate()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # and it round-trips


def test_config_round_trip():
    cfg = RunConfig(data="gmm2d:k=3")
    cfg.model.sigma_dec, cfg.train.lr, cfg.data_shape = 0.25, 3e-4, [2]
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_csv_above_the_readers_limit_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """The CSV reader holds every cell as text (about 10x the file): above MAX_CSV_BYTES it
    says to save a .npy instead, which is read in batches. (The limit is lowered for the test.)"""
    p = tmp_path / "big.csv"
    p.write_text("\n".join("1,2,3,4" for _ in range(300)))  # 2,099 bytes
    assert load_dataset(str(p), 0).x_train.shape[1:] == (4,)  # under the limit: read
    monkeypatch.setattr(formats_module, "MAX_CSV_BYTES", 1000)
    with pytest.raises(TrainerError, match=r"big.csv: the CSV is .* more than the CSV reader's limit .*np.save"):
        load_dataset(str(p), 0)


def test_a_folder_spec_over_a_huge_tree_gives_up_with_a_message(tmp_path, monkeypatch):
    """A spec naming '/' or a home folder would walk the whole tree: past MAX_FOLDER_ENTRIES
    entries looked at, a TrainerError asks for the data set's own folder. (Limit lowered.)"""
    folder = tmp_path / "tree"
    for i in range(3):
        (folder / f"sub{i}").mkdir(parents=True)
        for j in range(10):
            Image.fromarray(np.full((4, 4), 10 * j, np.uint8)).save(folder / f"sub{i}" / f"{j}.png")
    whole = load_dataset(str(folder), 0)  # 33 entries under the limit: read
    assert len(whole.x_train) + len(whole.x_test) == 30
    monkeypatch.setattr(formats_module, "MAX_FOLDER_ENTRIES", 20)
    with pytest.raises(TrainerError, match="more than 20 files and folders: give the folder of the data set"):
        load_dataset(str(folder), 0)
