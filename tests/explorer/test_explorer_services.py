"""Services without a browser: interpolation, projections, encodings, uploads, run folders.
References: torch.distributions for densities, the trained run's own API for encodings."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as hst

from explorer.services import cached, explore, pictures, uploads
from explorer.services import runs as run_service
from trainer import TrainerError, load_run
from trainer.runs import read_metrics

vectors = hst.integers(1, 64).flatmap(lambda d: hst.tuples(
    hst.lists(hst.floats(-10, 10, allow_subnormal=False), min_size=d, max_size=d),
    hst.lists(hst.floats(-10, 10, allow_subnormal=False), min_size=d, max_size=d)))


@settings(max_examples=200, deadline=None)
@given(vectors, hst.floats(0, 1, allow_subnormal=False))
def test_slerp_keeps_norms_between_the_endpoints_norms(ab, t):
    a, b = np.array(ab[0]), np.array(ab[1])
    assume(not (a.size == 1 and a[0] * b[0] < 0))  # opposite in d = 1: no circle joins them (slerp's doc)
    z = explore.slerp(a, b, t)
    lo, hi = sorted((np.linalg.norm(a), np.linalg.norm(b)))
    assert lo - 1e-9 <= np.linalg.norm(z) <= hi + 1e-9


@settings(max_examples=100, deadline=None)
@given(vectors)
def test_lerp_and_slerp_start_at_a_and_end_at_b(ab):
    a, b = np.array(ab[0]), np.array(ab[1])
    for f in (explore.lerp, explore.slerp):
        z = f(a, b, np.array([0.0, 1.0]))
        np.testing.assert_allclose(z[0], a, atol=1e-9)
        np.testing.assert_allclose(z[1], b, atol=1e-9)
    np.testing.assert_allclose(explore.lerp(a, b, 0.0), a)
    np.testing.assert_allclose(explore.lerp(a, b, 1.0), b)


def test_slerp_between_opposite_codes_keeps_to_the_sphere():
    a = np.array([3.0, 0.0, 0.0])
    t = np.linspace(0, 1, 9)
    z = explore.slerp(a, -a, t)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 3.0, atol=1e-12)
    np.testing.assert_allclose(z[[0, -1]], [a, -a], atol=1e-12)
    cos = np.clip((z[:-1] * z[1:]).sum(1) / 9.0, -1, 1)
    np.testing.assert_allclose(np.arccos(cos), np.pi / 8, atol=1e-9)  # constant angular speed


def test_slerp_moves_at_constant_angular_speed_on_the_circle():
    a, b = np.array([2.0, 0.0]), np.array([0.0, 2.0])  # a quarter circle of radius 2
    t = np.linspace(0, 1, 5)
    z = explore.slerp(a, b, t)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.0)
    np.testing.assert_allclose(np.arctan2(z[:, 1], z[:, 0]), t * np.pi / 2)
    mid = explore.lerp(a, b, 0.5)  # the straight line cuts inside the circle
    assert np.linalg.norm(mid) == pytest.approx(np.sqrt(2))


def test_prior_log_density_matches_torch_distributions():
    z = np.random.default_rng(0).normal(size=(7, 5))
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(torch.tensor(z)).sum(-1).numpy()
    np.testing.assert_allclose(explore.prior_log_density(z), ref, rtol=1e-12)
    axis, grid = explore.prior_density_grid(span=2.0, n=5)
    assert grid.shape == (5, 5) and grid[2, 2] == pytest.approx(-np.log(2 * np.pi))


def test_projections():
    rng = np.random.default_rng(0)
    mu2 = rng.normal(size=(40, 2))
    p = explore.project(mu2)
    np.testing.assert_array_equal(p.xy, mu2)
    np.testing.assert_array_equal(p.transform(mu2[:3]), mu2[:3])
    mu5 = rng.normal(size=(60, 5)) * np.array([5, 3, 0.1, 0.1, 0.1])
    pca = explore.project(mu5, "PCA")
    assert pca.xy.shape == (60, 2) and pca.axis_titles[0].startswith("PC 1")
    np.testing.assert_allclose(pca.transform(mu5), pca.xy, atol=1e-9)  # new points: the same map
    from sklearn.decomposition import PCA

    ref = PCA(n_components=2).fit(mu5)  # the two leading directions carry > 99 % of the variance
    assert ref.explained_variance_ratio_.sum() > 0.99
    tsne = explore.project(mu5, "t-SNE")
    assert tsne.xy.shape == (60, 2)
    np.testing.assert_allclose(tsne.transform(mu5[:4]), tsne.xy[:4], atol=1e-6)  # a code maps onto itself
    assert "UMAP" not in explore.available_projections() or explore.umap_installed()
    d1 = explore.project(rng.normal(size=(10, 1)))
    assert d1.xy.shape == (10, 2) and np.all(d1.xy[:, 1] == 0)


def test_umap_keeps_clusters_apart_and_is_seeded():
    """UMAP (umap-learn, installed by requirements-dev.txt): three clusters far apart in 5-D
    stay apart in the plane, the same seed gives the same map, and a code maps onto itself."""
    assert "UMAP" in explore.available_projections()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 20
    labels = np.repeat(np.arange(3), 40)
    mu = centres[labels] + rng.normal(size=(120, 5))
    proj = explore.project(mu, "UMAP", seed=3)
    assert proj.method == "UMAP" and proj.xy.shape == (120, 2) and np.isfinite(proj.xy).all()
    d2 = ((proj.xy[:, None] - proj.xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert (labels[d2.argmin(1)] == labels).mean() > 0.95  # each point's nearest neighbour: its own cluster
    np.testing.assert_array_equal(explore.project(mu, "UMAP", seed=3).xy, proj.xy)
    np.testing.assert_allclose(proj.transform(mu[:4]), proj.xy[:4], atol=1e-5)


@pytest.fixture(scope="module")
def run(digits_run):
    return load_run(digits_run)


@pytest.fixture(scope="module")
def enc(run):
    return explore.encode_test(run)


def test_encode_test_matches_the_run_api(run, enc):
    data = run.load_data()
    assert enc.n == len(data.x_test) and enc.latent_dim == 2 and enc.is_image
    np.testing.assert_allclose(enc.mu, run.encode(data.x_test).mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.elbo, enc.recon - enc.kl, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(enc.kl, enc.kl_per_dim.sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(enc.labels, data.y_test)
    assert enc.label_names == ["digit"]


def test_colour_options(enc):
    opts = explore.color_options(enc)
    assert opts == ["digit", "ELBO", "recon", "KL", "z1", "z2", "none"]
    v, discrete = explore.color_values(enc, "digit")
    assert discrete and set(np.unique(v)) <= set(range(10))
    v, discrete = explore.color_values(enc, "z2")
    assert not discrete and np.array_equal(v, enc.mu[:, 1])
    assert explore.color_values(enc, "KL")[0] is enc.kl
    with pytest.raises(ValueError):
        explore.color_values(enc, "z3")


def test_path_frames_decode_the_path(run, enc):
    f = explore.path_frames(run, enc.mu[0], enc.mu[5], "slerp", steps=11)
    np.testing.assert_allclose(f.z[0], enc.mu[0], atol=1e-6)
    np.testing.assert_allclose(f.z[-1], enc.mu[5], atol=1e-6)
    assert f.images.shape == (11, 1, 8, 8)
    np.testing.assert_allclose(f.images[3], run.decode(f.z[3:4]).numpy()[0], atol=1e-6)
    np.testing.assert_allclose(f.log_prior, explore.prior_log_density(f.z))
    ref = run.elbo_terms(torch.as_tensor(f.images), mc_samples=16, seed=0)["elbo"].numpy()
    np.testing.assert_allclose(f.decoded_elbo, ref, rtol=1e-5)


def test_manifold_grid_is_read_from_the_top_left(run):
    axis, z = explore.latent_grid(3, 2.0)
    np.testing.assert_allclose(z[0], [-2.0, 2.0])  # top-left: z1 smallest, z2 largest
    np.testing.assert_allclose(z[-1], [2.0, -2.0])
    images = explore.manifold(run, n=3, span=2.0)
    np.testing.assert_allclose(images, run.decode(z).numpy(), atol=1e-6)


def test_traversals_vary_one_dimension_per_row(run, enc):
    order = explore.dims_by_kl(enc.kl_per_dim)
    assert enc.kl_per_dim.mean(0)[order[0]] >= enc.kl_per_dim.mean(0)[order[1]]
    images = explore.traversals(run, [1, 0], steps=4, span=3.0)
    z = np.zeros((8, 2))
    z[:4, 1] = z[4:, 0] = np.linspace(-3, 3, 4)
    np.testing.assert_allclose(images, run.decode(z).numpy(), atol=1e-6)


def test_sample_breakdown_is_consistent(run, enc):
    b = explore.sample_breakdown(run, enc.x[0], mc_samples=50, k=500)
    assert b["elbo"] == pytest.approx(b["recon"] - b["kl"], rel=1e-6)
    assert b["gap"] == pytest.approx(b["log_px"] - b["elbo"])
    assert b["gap"] > -0.5  # log p(x) >= ELBO, up to Monte Carlo noise
    assert b["kl"] == pytest.approx(float(enc.kl[0]), rel=1e-4)  # closed form, no noise


def test_active_dims_and_png(enc):
    assert enc.active_dims.tolist() == (enc.mu.var(0, ddof=1) > 0.01).tolist()  # the trainer's rule
    png = pictures.png(enc.x[:4], ncols=4, size=32)
    from PIL import Image

    im = Image.open(io.BytesIO(png))
    assert im.size == (4 * 8 * 4 + 5 * 4, 8 * 4 + 2 * 4)  # 8x8 images, 1-px pads, scaled by 4


# -- run folders ------------------------------------------------------------------------------

def test_list_and_summarize_runs(runs_dir):
    runs = run_service.list_runs(runs_dir)
    assert [r.name for r in runs] == ["digits-2d"]
    s = runs[0]
    trained_epochs = len(read_metrics(s.path))  # as the fixture trained it (tests/conftest.py)
    assert s.state == "done" and s.trained and s.epoch == s.epochs == trained_epochs > 0
    assert s.config.model.latent_dim == 2
    row = run_service.table_row(s, {"elbo": 1.0, "recon": 2.0, "kl": 1.0, "log_px": 1.5})
    assert (row["test ELBO"], row["log p(x)"], row["epochs"]) == ("1.00", "1.50", f"{trained_epochs}/{trained_epochs}")
    assert row["sigma_dec"].startswith("learned ")
    assert row["data"] == "digits"  # the data set's name (data.json), not a path
    assert run_service.list_runs(runs_dir / "missing") == []


def test_open_run_is_cached_per_checkpoint(scratch_runs):
    path = scratch_runs / "digits-2d"
    r1, r2 = run_service.open_run(path), run_service.open_run(path)
    assert r1 is r2
    import os

    st = os.stat(path / "model.safetensors")
    os.utime(path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run_service.open_run(path) is not r1  # a new checkpoint: loaded again


def test_cached_results_are_per_checkpoint(scratch_runs, monkeypatch):
    import os

    encodings = []
    monkeypatch.setattr(explore, "encode_test", lambda run: encodings.append(run) or explore.Encoded(
        *[np.zeros((3, 2))] * 7, labels=None, label_names=[], is_image=False, active_dims=np.zeros(2, bool)))
    path = scratch_runs / "digits-2d"
    ckpt = cached.checkpoint(path)
    assert ckpt == cached.checkpoint(path) and ckpt.path == str(path.resolve())
    assert cached.reconstructions(ckpt).shape[0] == 3  # decoded from encoded(ckpt)
    assert isinstance(cached.encoded(ckpt), explore.Encoded) and len(encodings) == 1  # one entry, per function
    st = os.stat(path / "model.safetensors")
    os.utime(path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    newer = cached.checkpoint(path)
    assert newer != ckpt
    cached.encoded(newer)
    assert len(encodings) == 2  # a new checkpoint is computed again, never served the old one's


def test_delete_run(scratch_runs):
    with pytest.raises(TrainerError):
        run_service.delete_run(scratch_runs, "../digits-2d")
    with pytest.raises(TrainerError):
        run_service.delete_run(scratch_runs, "nope")
    run_service.delete_run(scratch_runs, "digits-2d")
    assert not (scratch_runs / "digits-2d").exists()


# -- uploads --------------------------------------------------------------------------------------

def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_upload_a_good_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 6, 6)).astype(np.uint8)
    saved = uploads.save_upload(tmp_path, [("../../evil name.npz", npz_bytes(x=x, y=np.arange(40) % 4))])
    assert saved.name == "evil_name.npz" and (tmp_path / "uploads" / "evil_name.npz").exists()
    assert saved.n_samples == 40 and saved.shape == (1, 6, 6) and saved.is_image and saved.label_names == ["label"]
    again = uploads.save_upload(tmp_path, [("evil name.npz", npz_bytes(x=x))])
    assert again.name == "evil_name-2.npz"
    assert [p.name for p in uploads.list_uploads(tmp_path)][0] in ("evil_name.npz", "evil_name-2.npz")


@pytest.mark.parametrize("name, data, words", [
    ("x.npz", b"garbage", "x.npz"),
    ("x.npz", npz_bytes(a=np.zeros((3, 2))), "no array named 'x'"),
    ("x.npz", npz_bytes(x=np.array([object()], dtype=object)), "x.npz"),
    ("x.csv", b"a,b\n1,nan\n2,3\n", "x.csv"),
    ("x.exe", b"MZ", "unknown file type"),
    ("one.png", "a real PNG", "single image"),
])
def test_bad_uploads_are_refused_and_not_kept(tmp_path, name, data, words):
    if data == "a real PNG":
        data = png_file(np.zeros((4, 4), np.uint8))
    with pytest.raises(TrainerError) as e:
        uploads.save_upload(tmp_path, [(name, data)])
    msg = str(e.value)
    assert words in msg and "\n" not in msg and str(tmp_path) not in msg
    assert not any((tmp_path / "uploads").iterdir()) if (tmp_path / "uploads").exists() else True


def png_file(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_upload_several_images_as_one_folder(tmp_path):
    files = [(f"im{i}.png", png_file((np.random.default_rng(i).random((5, 5)) * 255).astype(np.uint8)))
             for i in range(6)]
    saved = uploads.save_upload(tmp_path, files)
    assert saved.is_image and saved.n_samples == 6 and saved.shape == (1, 5, 5)
    assert len(list((tmp_path / "uploads" / saved.name).iterdir())) == 6


def test_typical_log_density_band_matches_prior_samples():
    d = 16
    torch.manual_seed(0)
    z = torch.distributions.Normal(0.0, 1.0).sample((40000, d))
    logp = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1).double()
    lo, hi = explore.typical_log_density(d)
    assert (lo + hi) / 2 == pytest.approx(float(logp.mean()), abs=0.05)
    assert (hi - lo) / 4 == pytest.approx(float(logp.std()), rel=0.03)
    inside = float(((logp > lo) & (logp < hi)).double().mean())
    assert 0.93 < inside < 0.97
    # the straight line between two typical codes has atypically high density at its middle
    a, b = z[0].numpy(), z[1].numpy()
    assert explore.prior_log_density(explore.lerp(a, b, 0.5)) > explore.prior_log_density(explore.slerp(a, b, 0.5))


def test_manifold_background_centres_tiles_on_their_codes():
    images = np.zeros((9, 1, 4, 4), np.float32)
    images[4] = 1.0  # the centre tile (z = 0) is all ink
    grid, half = pictures.manifold_background(images, n=3, span=2.0, scale=2)
    assert grid.shape == (2 * (3 * 5 + 1), 2 * (3 * 5 + 1)) and grid.dtype == np.uint8
    assert half == pytest.approx(3.0)  # tiles 2 apart, so the picture reaches 1 beyond +-2
    c = grid.shape[0] // 2
    assert grid[c, c] == 0 and grid[4, 4] == 255  # ink is dark, empty tiles are light
