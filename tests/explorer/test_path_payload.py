"""The Interpolate component's message (explorer/services/path_payload.py), without a browser:
enough steps, frame k is the decoder's mean at z(t_k) (z(t) from the closed forms, decoded
with the model itself), lerp is straight and slerp keeps the norms, the bytes read back
exactly, and the id names the path, not where the slider starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.services import explore, path_payload
from trainer import load_run


def reference_path(a: np.ndarray, b: np.ndarray, t: np.ndarray, method: str) -> np.ndarray:
    """z(t) (T, d) from the formulas: lerp (1 - t) a + t b; slerp along the great circle of the
    directions, sin((1 - t) w) / sin w a^ + sin(t w) / sin w b^ (w the angle between them), with
    the norm (1 - t)|a| + t|b|."""
    t = t[:, None]
    if method == "lerp":
        return (1 - t) * a + t * b
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    w = np.arccos(np.dot(a, b) / (na * nb))
    unit = (np.sin((1 - t) * w) * a / na + np.sin(t * w) * b / nb) / np.sin(w)
    return unit * ((1 - t) * na + t * nb)


@pytest.fixture(scope="module")
def digits(digits_run):
    run = load_run(digits_run)
    enc = explore.encode_test(run)
    return run, enc


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_frame_k_is_the_decoders_mean_at_z_of_t_k(digits, method):
    run, enc = digits
    a, b = 0, 7
    frames = explore.path_frames(run, enc.mu[a], enc.mu[b], method)
    proj = explore.project(enc.mu, "PCA")
    message = path_payload.payload(frames, True, proj.xy, proj.transform(frames.z), a, b, 0.5, method)
    header, blobs = path_payload.unpack(message)

    steps = header["steps"]
    assert steps >= 64 and blobs["frames"].shape[0] == steps
    t = np.linspace(0.0, 1.0, steps)
    np.testing.assert_allclose(header["t"], t, atol=1e-6)
    z = reference_path(enc.mu[a].astype(np.float64), enc.mu[b].astype(np.float64), t, method)
    with torch.no_grad():
        means = run.model.decoder_mean(run.model.decode(torch.tensor(z, dtype=torch.float32)))
    images = means.reshape(steps, *run.model.data_shape).numpy()  # (T, C, H, W)
    expected = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    # float32 decodes of z computed two ways may differ in the last bit: at most one level of 255
    diff = np.abs(blobs["frames"].astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert blobs["frames"].shape[1:] == (8, 8, 1) and header["shape"] == [8, 8, 1]
    # the map's path is z(t_k) through the same projection as the codes
    np.testing.assert_allclose(blobs["path"], proj.transform(z), atol=1e-4)
    np.testing.assert_allclose(blobs["points"], proj.xy, atol=1e-5)
    assert header["map"]["a"] == a and header["map"]["b"] == b and header["method"] == method


def test_lerp_is_straight_and_slerp_keeps_the_norm_between_the_endpoints(digits):
    run, enc = digits
    a, b = 0, 7
    ident = explore.project(enc.mu, "PCA")  # d = 2: the map is the latent plane itself, turned
    paths = {}
    for method in ("lerp", "slerp"):
        frames = explore.path_frames(run, enc.mu[a], enc.mu[b], method)
        _, blobs = path_payload.unpack(path_payload.payload(frames, True, ident.xy, frames.z, a, b, 0.0, method))
        paths[method] = blobs["path"].astype(np.float64)  # (T, 2): z(t_k) itself, d = 2
    za, zb = enc.mu[a].astype(np.float64), enc.mu[b].astype(np.float64)
    line = paths["lerp"] - za
    cross = line[:, 0] * (zb - za)[1] - line[:, 1] * (zb - za)[0]
    np.testing.assert_allclose(cross, 0, atol=1e-4)  # every lerp step on the segment A-B
    norms = np.linalg.norm(paths["slerp"], axis=1)
    lo, hi = sorted((np.linalg.norm(za), np.linalg.norm(zb)))
    assert np.all(norms >= lo - 1e-4) and np.all(norms <= hi + 1e-4)
    mid = len(norms) // 2
    assert np.linalg.norm(paths["lerp"][mid]) < norms[mid] - 1e-3  # the straight line cuts inside
    assert not np.allclose(paths["lerp"], paths["slerp"], atol=1e-3)


def test_the_bytes_read_back_exactly_and_the_id_names_the_path(digits):
    run, enc = digits
    frames = explore.path_frames(run, enc.mu[3], enc.mu[9], "lerp")
    values, discrete = explore.color_values(enc, enc.label_names[0])
    make = lambda t0, b=9: path_payload.payload(frames, True, enc.mu, frames.z, 3, b, t0, "lerp",  # noqa: E731
                                                ("z1", "z2"), values, discrete, enc.label_names[0])
    header, blobs = path_payload.unpack(make(0.25))
    assert header["t0"] == 0.25 and header["version"] == path_payload.VERSION
    np.testing.assert_array_equal(blobs["frames"], path_payload.frames_uint8(frames.images))
    np.testing.assert_array_equal(blobs["points"], enc.mu.astype(np.float32))
    assert all(off % 4 == 0 for off, *_ in header["blobs"].values())  # typed views in the page need it
    # colours: one palette entry per category, the same for equal labels
    colors = blobs["colors"]
    labels = values.astype(int)
    for lab in np.unique(labels)[:3]:
        assert len(set(colors[labels == lab].tolist())) == 1
    assert len(set(colors.tolist())) == min(len(np.unique(labels)), len(path_payload.PALETTE))
    assert path_payload.unpack(make(0.9))[0]["id"] == header["id"]  # only where the slider starts
    assert path_payload.unpack(make(0.25, b=10))[0]["id"] != header["id"]  # another path


def test_data_that_is_not_an_image_is_sent_as_values():
    t = np.linspace(0, 1, 65)
    images = np.stack([np.sin(3 * t), t - 0.5, np.cos(t)], 1)  # (T, 3) decoded vectors
    z = np.stack([t, 1 - t], 1)
    frames = explore.PathFrames(t, z, images, -np.ones_like(t), np.zeros_like(t))
    header, blobs = path_payload.unpack(path_payload.payload(frames, False, z, z, 0, 1, 0.5, "lerp"))
    assert header["kind"] == "values" and header["shape"] == [3] and "frames" not in blobs
    np.testing.assert_array_equal(blobs["values"], images.astype(np.float32))
    lo, hi = header["range"]
    assert lo <= min(0.0, images.min()) and hi >= max(0.0, images.max())  # bars are drawn from 0
    assert blobs["colors"].shape == (0,) and header["map"]["palette"] == path_payload.NO_COLOR


def test_a_large_map_is_a_stated_subsample_that_keeps_the_endpoints():
    n = path_payload.MAP_POINTS + 500
    shown = path_payload.map_subsample(n, (7, n - 1))
    assert len(shown) == path_payload.MAP_POINTS and {7, n - 1} <= set(shown.tolist())
    assert np.all(np.diff(shown) > 0)
    np.testing.assert_array_equal(path_payload.map_subsample(n, (7, n - 1)), shown)  # seeded
    np.testing.assert_array_equal(path_payload.map_subsample(100, (1, 2)), np.arange(100))
