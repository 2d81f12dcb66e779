"""The in-page latent map's payloads (explorer/services/inpage.py), without a browser: the
binary container, the thumbnail atlas, the decoder's weights for map.js, the conv decoder's
lookup grid, the plane the cursor decodes on, and the colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.services import explore, inpage
from trainer import RunConfig, fit, load_run


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """One epoch each of the architectures and likelihoods the page decodes differently."""
    root = tmp_path_factory.mktemp("inpage")
    specs = {"linear-bernoulli": ("digits", "linear", "bernoulli", 2, None),
             "mlp-cb-4d": ("digits", "mlp", "continuous-bernoulli", 4, None),
             "conv-2d": ("shapes:n=300,size=16", "conv", "bernoulli", 2, None)}
    out = {}
    for name, (data, arch, lik, d, _) in specs.items():
        cfg = RunConfig(data=data)
        cfg.model.arch, cfg.model.likelihood, cfg.model.latent_dim = arch, lik, d
        cfg.model.hidden, cfg.model.conv_channels = [32], [8, 8]
        cfg.train.epochs, cfg.train.threads = 1, 1
        fit(cfg, root / name)
        out[name] = load_run(root / name)
    return out


def encoded_payload(run):
    enc = explore.encode_test(run)
    recon = run.decode(enc.mu).numpy()
    return enc, recon, inpage.unpack(inpage.samples_payload(run, enc, recon))


def test_pack_round_trips_arrays_and_names_the_content():
    arrays = {"a": np.arange(7, dtype=np.float32).reshape(7, 1), "b": np.array([[1, 2, 3]], np.uint8),
              "c": np.array([-5, 2**31 - 1], np.int32)}
    blob = inpage.pack({"k": [1, "x"]}, arrays)
    pid, meta, back = inpage.unpack(blob)
    assert meta == {"k": [1, "x"]} and set(back) == set(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)
    # every array starts 8-byte aligned (typed arrays in the page need it)
    n = int.from_bytes(blob[4:8], "little")
    assert (8 + n) % 8 == 0
    assert inpage.pack({"k": [1, "x"]}, arrays) == blob  # same content, same bytes and id
    other = inpage.pack({"k": [1, "x"]}, {**arrays, "b": np.array([[1, 2, 4]], np.uint8)})
    assert inpage.unpack(other)[0] != pid
    with pytest.raises(ValueError, match="dtype"):
        inpage.pack({}, {"d": np.zeros(2, np.float64)})


def test_atlas_tile_k_is_sample_atlas_index_k(digits_run):
    run = load_run(digits_run)
    enc, recon, (_, meta, arrays) = encoded_payload(run)
    assert meta["is_image"] and meta["thumbnails"] == "all"
    assert np.array_equal(arrays["atlas_index"], np.arange(enc.n))
    assert arrays["atlas_x"].shape == (enc.n, 8, 8, 1) and arrays["atlas_x"].dtype == np.uint8
    for k in (0, 1, 17, enc.n - 1):
        i = arrays["atlas_index"][k]
        # the data itself, (1, 8, 8) in [0, 1], as 8-bit grey
        want = np.clip(np.round(enc.x[i, 0] * 255), 0, 255)
        assert np.array_equal(arrays["atlas_x"][k, :, :, 0], want)
        assert np.array_equal(arrays["atlas_recon"][k, :, :, 0], np.clip(np.round(np.clip(recon[i, 0], 0, 1) * 255), 0, 255))
    assert not np.array_equal(arrays["atlas_x"][0], arrays["atlas_x"][1])


def test_above_max_points_a_stated_seeded_subsample(digits_run, monkeypatch):
    run = load_run(digits_run)
    monkeypatch.setattr(inpage, "MAX_POINTS", 100)
    enc, recon, (_, meta, arrays) = encoded_payload(run)
    idx = arrays["atlas_index"]
    assert len(idx) == 100 and np.all(np.diff(idx) > 0) and meta["thumbnails"] == f"100 of {enc.n} test samples"
    k = 37
    assert np.array_equal(arrays["atlas_x"][k, :, :, 0], np.round(enc.x[idx[k], 0] * 255))
    _, pmeta, parr = inpage.unpack(inpage.points_payload(enc.mu, None, False, "none", ["#636EFA"]))
    assert pmeta["shown"] == 100 and np.array_equal(parr["index"], idx)  # the same points are drawn
    assert np.allclose(parr["xy"], enc.mu[idx])
    assert np.array_equal(inpage.shown_points(enc.n), idx)  # seeded: the same every time


@pytest.mark.parametrize("name", ["digits-2d", "linear-bernoulli", "mlp-cb-4d"])
def test_the_decoder_weights_round_trip_and_decode_as_torch(name, digits_run, small_runs):
    run = load_run(digits_run) if name == "digits-2d" else small_runs[name]
    _, _, (_, meta, arrays) = encoded_payload(run)
    assert meta["decoder"]["kind"] == "mlp"
    layers = [(arrays[f"w{k}"], arrays[f"b{k}"]) for k in range(meta["decoder"]["layers"])]
    modules = [m for m in run.model.decoder_net.modules() if isinstance(m, torch.nn.Linear)]
    for (w, b), m in zip(layers, modules, strict=True):  # bit for bit the weights torch holds
        assert np.array_equal(w, m.weight.detach().numpy()) and np.array_equal(b, m.bias.detach().numpy())
    z = np.random.default_rng(0).normal(size=(100, run.model.latent_dim)) * 2
    page = inpage.decode_like_the_page(layers, meta["output"], z)
    torch_mean = run.decode(z).numpy().reshape(100, -1)
    assert np.abs(page - torch_mean).max() <= 1e-5


def test_conv_is_a_grid_of_decodes_looked_up(small_runs):
    run = small_runs["conv-2d"]
    enc, _, (_, meta, arrays) = encoded_payload(run)
    dec = meta["decoder"]
    assert dec["kind"] == "grid" and "w0" not in arrays
    n = dec["n"]
    assert arrays["conv_grid"].shape == (n * n, 16, 16, 1)
    lo, hi = np.array(dec["lo"]), np.array(dec["hi"])
    assert np.all(lo < enc.mu.min(0)) and np.all(hi > enc.mu.max(0))  # it covers every code
    r, c = 7, 30  # cell r * n + c decodes u = lo_u + c step, v = lo_v + r step
    uv = lo + np.array([c, r]) * (hi - lo) / (n - 1)
    want = np.round(np.clip(run.decode(uv[None]).numpy()[0, 0], 0, 1) * 255)
    assert np.abs(arrays["conv_grid"][r * n + c, :, :, 0].astype(int) - want).max() <= 1


def test_for_d_above_2_the_cursor_decodes_on_the_first_two_principal_components(small_runs):
    run = small_runs["mlp-cb-4d"]
    enc, _, (_, meta, arrays) = encoded_payload(run)
    mean, axes = arrays["plane_mean"].astype(np.float64), arrays["plane_axes"].astype(np.float64)
    assert np.allclose(mean, enc.mu.mean(0), atol=1e-5)
    assert np.allclose(axes @ axes.T, np.eye(2), atol=1e-5)  # orthonormal
    centred = enc.mu - enc.mu.mean(0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]  # the principal directions
    assert np.allclose(np.abs(axes @ top.T), np.eye(2), atol=1e-4)
    proj = explore.project(enc.mu, "PCA")  # the PCA view's points are the plane's coordinates
    assert np.allclose((enc.mu - mean) @ axes.T, proj.xy, atol=1e-4)


def test_colours_and_legends():
    palette = ["#636EFA", "#EF553B", "#00CC96"]
    rgb, legend = inpage.colours(np.array([2.0, 0.0, 2.0, 1.0]), True, "digit", palette)
    assert [it["label"] for it in legend["items"]] == ["digit 0", "digit 1", "digit 2"]
    assert rgb.tolist() == [[0, 204, 150], [99, 110, 250], [0, 204, 150], [239, 85, 59]]
    rgb, legend = inpage.colours(np.array([-3.0, 1.0, 5.0]), False, "ELBO", palette)
    assert legend["kind"] == "scale" and (legend["min"], legend["max"]) == (-3.0, 5.0)
    lut = inpage.viridis()
    assert rgb.tolist() == [lut[0].tolist(), lut[128].tolist(), lut[255].tolist()]
    assert tuple(lut[0]) == (68, 1, 84)  # Viridis starts dark purple


def test_non_image_data_sends_its_values_for_a_bar_strip(tmp_path):
    cfg = RunConfig(data="linear-gaussian:n=400,d=8")
    cfg.model.latent_dim, cfg.model.hidden = 3, [16]
    cfg.train.epochs, cfg.train.threads = 1, 1
    fit(cfg, tmp_path / "lin")
    run = load_run(tmp_path / "lin")
    enc, recon, (_, meta, arrays) = encoded_payload(run)
    assert not meta["is_image"] and "atlas_x" not in arrays and meta["bars"] == 8
    k = 11
    i = arrays["atlas_index"][k]
    assert np.array_equal(arrays["bars_x"][k], enc.x[i].astype(np.float32))  # the values themselves
    assert np.allclose(arrays["bars_recon"][k], recon[i])
    lo, hi = meta["bar_range"]
    assert lo <= arrays["bars_x"].min() and hi >= arrays["bars_x"].max()
    assert meta["decoder"]["kind"] == "mlp"  # f(z) at the cursor: its values as bars too
