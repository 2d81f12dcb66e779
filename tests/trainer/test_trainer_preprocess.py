"""Standardisation of a user's table (trainer/preprocess.py) on real tables that ship with
scikit-learn, wine and iris, written to CSV as a user would: the defaults train a model
whose figures are honest and in the data's own units (issue 15)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import torch
from scipy.stats import norm

from tests.trainer.test_trainer_cli import assert_user_error, fit_args
from trainer import load_run
from trainer.data import load_dataset


def header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def per_feature_gaussian_log_px(ds) -> float:
    """The reference: each column an independent Gaussian fitted (maximum likelihood) on the
    training split, its mean log density over the test split, nats per sample (scipy)."""
    train, test = ds.x_train.double().numpy(), ds.x_test.double().numpy()
    return float(norm.logpdf(test, train.mean(0), train.std(0)).sum(1).mean())


def test_defaults_use_both_latent_units_and_beat_a_per_feature_gaussian(table_runs):
    for name in ("wine", "iris"):
        run = load_run(table_runs[name])
        ds = run.load_data()
        terms = run.elbo_terms(ds.x_test, mc_samples=1)
        log_px = run.log_px(ds.x_test, k=1000).double()
        elbo = terms["elbo"].double()
        # both latent units are active: their posterior means vary over the test set
        assert (terms["mu"].var(0) > 0.01).all(), (name, terms["mu"].var(0))
        # ELBO <= log p(x): the mean gap is not negative beyond its noise (paired, 3 s.e.)
        gap = log_px - elbo
        se = float(gap.std() / math.sqrt(len(gap)))
        assert float(gap.mean()) > -3 * se, (name, float(gap.mean()), se)
        # and the model explains more than independent Gaussian columns do
        assert float(log_px.mean()) > per_feature_gaussian_log_px(ds), name


def test_the_standardisation_is_the_training_splits_mean_and_sd_saved_with_the_run(table_runs, tables):
    run_dir = table_runs["wine"]
    saved = json.loads((run_dir / "standardize.json").read_text())
    train = load_dataset(str(tables["wine"]), 0).x_train.double().numpy()
    assert np.allclose(saved["mean"], train.mean(0), rtol=1e-12)
    assert np.allclose(saved["scale"], train.std(0), rtol=1e-12)
    assert saved["columns"] == [c for c in header(tables["wine"]) if c != "target"]
    run = load_run(run_dir)
    assert run.model.standardizer is not None and run.config.standardize


def test_log_px_of_a_standardised_run_is_the_density_in_the_datas_own_units(table_runs):
    """The change of variables, computed independently with torch.distributions: the model's
    networks work on x' = (x - m) / s; in x's units p(x|z) is N(m + s f(z), diag(s sigma_dec)^2),
    so log p(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K with that
    Gaussian, the same draws z_k, and no correction term left to add."""
    from torch.distributions import Independent, Normal

    run = load_run(table_runs["wine"])
    model = run.model
    x = run.load_data().x_test  # (N, D) in the data's own units (proline ~ 1000)
    assert float(x[:, -1].mean()) > 100
    m = torch.tensor(model.standardizer.mean, dtype=torch.float64)
    s = torch.tensor(model.standardizer.scale, dtype=torch.float64)
    k, seed = 500, 3
    with torch.no_grad():
        mu, _ = model.encoder_net(((x.double() - m) / s).float())
        logvar = model.encode(x).logvar  # the bounded log-variance, from the same networks
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k, *mu.shape), generator=torch.Generator().manual_seed(seed))
        z = mu + std * eps  # (K, N, d): the draws run.log_px takes with this seed
        mean_x = m + s * model.decoder_net(z.reshape(-1, z.shape[-1])).double().reshape(k, len(x), -1)
        p_x_given_z = Independent(Normal(mean_x, s * float(model.sigma_dec)), 1).log_prob(x.double())
        p_z = Independent(Normal(torch.zeros_like(z), 1.0), 1).log_prob(z)
        q_z = Independent(Normal(mu, std), 1).log_prob(z)
        expected = torch.logsumexp(p_x_given_z + p_z.double() - q_z.double(), 0) - math.log(k)
    got = run.log_px(x, k=k, seed=seed).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3), (got[:4], expected[:4])
    # the ELBO's reconstruction term is in the same units: log N(x; m + s f(z), s sigma_dec)
    terms = run.elbo_terms(x, mc_samples=1, seed=seed)
    with torch.no_grad():
        z1 = model.encode(x).mu + std * torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
        mean1 = m + s * model.decoder_net(z1).double()
        recon = Independent(Normal(mean1, s * float(model.sigma_dec)), 1).log_prob(x.double())
    assert torch.allclose(terms["recon"].double(), recon, rtol=1e-4, atol=1e-3)


def test_decoded_and_generated_samples_are_in_the_datas_units(table_runs):
    run = load_run(table_runs["wine"])
    ds = run.load_data()
    generated = run.generate(500).double()  # (500, 13)
    train = ds.x_train.double()
    # each column's generated mean lies within one training sd of the training mean
    assert ((generated.mean(0) - train.mean(0)).abs() < train.std(0)).all()
    decoded = run.decode(run.encode(ds.x_test).mu).double()
    assert float((decoded[:, -1] - ds.x_test[:, -1].double()).abs().mean()) < float(train[:, -1].std())


def test_no_standardize_keeps_the_values_as_they_are(table_runs):
    run = load_run(table_runs["wine-unscaled"])
    assert not (table_runs["wine-unscaled"] / "standardize.json").exists()
    assert run.model.standardizer is None and run.config.standardize is False


def test_a_column_with_zero_variance_is_refused_naming_it(cli, tmp_path, tables):
    rows = list(csv.reader(open(tables["iris"], newline="")))
    rows = [r + (["constant"] if i == 0 else ["2.5"]) for i, r in enumerate(rows)]
    with open(tmp_path / "flat.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    result = cli(*fit_args(tmp_path / "flat.csv", tmp_path / "run"))
    assert_user_error(result, "constant", "zero variance", "--no-standardize")
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # without standardisation the same table trains
    result = cli(*fit_args(tmp_path / "flat.csv", tmp_path / "run2", "--no-standardize"))
    assert result.status == 0, result.stderr


def test_names_survive_into_the_run(table_runs, tables):
    for name, classes in (("wine", []), ("iris", ["setosa", "versicolor", "virginica"])):
        run = load_run(table_runs[name])
        info = run.data_info
        assert info["name"] == f"{name}.csv"
        assert info["feature_names"] == [c for c in header(tables[name]) if c != "target"]
        assert info["label_name"] == "target" and info["label_names"] == ["target"]
        assert info["class_names"] == classes
        ds = run.load_data()
        assert ds.feature_names == info["feature_names"] and ds.display_name == f"{name}.csv"
        if classes:  # y == i is class_names[i]: the rows of setosa have the smallest petals
            y = ds.y_train[:, 0]
            petal = ds.x_train[:, 2].numpy()
            assert petal[y == 0].max() < petal[y == 1].min()


def test_names_of_an_npz_and_an_image_folder_are_kept(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "table.npz", x=rng.normal(size=(20, 3)), y=np.array(["b", "a"] * 10),
             feature_names=np.array(["height", "width", "depth"]), label_name=np.array(["kind"]))
    ds = load_dataset(str(tmp_path / "table.npz"), 0)
    assert ds.feature_names == ["height", "width", "depth"] and ds.label_name == "kind"
    assert ds.class_names == ["a", "b"] and ds.display_name == "table.npz"
    np.savez(tmp_path / "plain.npz", x=rng.normal(size=(20, 3)))
    plain = load_dataset(str(tmp_path / "plain.npz"), 0)
    assert plain.feature_names == ["x1", "x2", "x3"] and plain.label_name is None
    for cls in ("cats", "dogs"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(tmp_path / "pets" / cls / f"{i}.png")
    images = load_dataset(str(tmp_path / "pets"), 0)
    assert images.class_names == ["cats", "dogs"] and images.display_name == "pets"
    assert images.feature_names == [] and images.label_name == "folder"


def test_a_standardised_run_resumes_to_the_numbers_of_an_uninterrupted_one(tables, tmp_path):
    from tests.trainer.conftest import small_config
    from trainer import fit
    from trainer.runs import read_metrics

    fit(small_config(str(tables["iris"]), epochs=4), tmp_path / "straight")
    fit(small_config(str(tables["iris"]), epochs=2), tmp_path / "resumed")
    fit(small_config(str(tables["iris"]), epochs=4), tmp_path / "resumed", resume=True)
    keys = ("test_elbo", "test_recon", "test_kl", "train_elbo")
    rows = [[{k: r[k] for k in keys} for r in read_metrics(tmp_path / d)] for d in ("straight", "resumed")]
    assert rows[0] == rows[1]
    a, b = (load_run(tmp_path / d).model.state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "standardize.json").read_bytes() == (tmp_path / "resumed" / "standardize.json").read_bytes()


def test_data_read_from_disk_in_batches_is_standardised_alike(tmp_path):
    """A .npy read a batch at a time (mmap=1): its column statistics are summed chunk by chunk
    and give the in-memory standardisation; a constant column is refused there too."""
    from trainer import preprocess

    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(1000, 50, 3000), rng.normal(0, 0.01, 3000)]).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    whole = load_dataset(str(tmp_path / "t.npy"), 0)
    lazy = load_dataset(str(tmp_path / "t.npy") + ":mmap=1", 0)
    assert not isinstance(lazy.x_train, torch.Tensor)
    a, b = preprocess.fit(whole.x_train), preprocess.fit(lazy.x_train)
    assert np.allclose(a.mean, b.mean, rtol=1e-12) and np.allclose(a.scale, b.scale, rtol=1e-9)
    x[:, 1] = 0.1  # a constant whose chunked sums are not exact in binary
    np.save(tmp_path / "c.npy", x)
    for spec in ("c.npy", "c.npy:mmap=1"):
        data = load_dataset(str(tmp_path / spec), 0)
        try:
            preprocess.fit(data.x_train, data.feature_names, where=spec)
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            assert "x2" in str(e) and "zero variance" in str(e)
        else:
            raise AssertionError(f"{spec}: a constant column was not refused")
