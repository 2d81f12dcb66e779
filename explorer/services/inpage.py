"""What the in-page latent map (explorer/components/latent_map/) is sent: computed here, from a
trained run and its encoded test set, so that it is tested without a browser.

Two payloads, each one binary blob (`pack`), sent once and kept by the page:

    samples payload  (one per checkpoint)
        atlas_x, atlas_recon  (n, H, W, C) uint8  the inputs and their reconstructions
                              f(mu(x)) as thumbnails (image data), tile k = sample atlas_index[k]
        bars_x, bars_recon    (n, B) float32      non-image data: the first B values, a bar strip
                                                  (meta feature_names: their B names;
                                                  bar_range, and bar_ranges per feature when
                                                  one scale would flatten some: explore.bar_scales)
        decoder weights       w0, b0, w1, b1, ... float32 (mlp, linear: a JS forward pass)
        conv_grid             (G*G, H, W, C) uint8 decodes on a G x G grid (conv: looked up)
        plane                 z = mean + u * axes[0] + v * axes[1]: the plane the cursor
                              decodes on (d = 2: z itself; d > 2: the first two principal
                              components of the codes, through their mean)
    points payload   (per checkpoint, projection and colouring)
        xy (n, 2) float32, rgb (n, 3) uint8, index (n,) int32 (the test index of each point),
        the legend (its name: what colours the points, e.g. the label "target"; its items:
        the category names), and for the hover each point's category (n,) int32 (its legend
        item) or value (n,) float32

Above MAX_POINTS test samples a stated, seeded subsample is drawn (and has thumbnails).
The view's own small JSON (selected sample, switches) is sent beside them on every run;
Streamlit caches messages of 10 kB or more by hash, so an unchanged payload is not re-sent.

Format of a blob: b"VLM1", a little-endian uint32 header length, the header (UTF-8 JSON:
{"id", "meta", "arrays": {name: {"dtype", "shape", "offset"}}}, padded with spaces to a
multiple of 8), then each array's bytes (C order, little-endian) at its offset from the end
of the header, 8-byte aligned. `unpack` reads it back; map.js reads it the same way.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import torch

from trainer import Run
from trainer.likelihoods import ContinuousBernoulli

from . import explore

MAGIC = b"VLM1"
MAX_POINTS = 20_000  # points drawn (and thumbnails sent); above, a seeded subsample
MAX_ATLAS_BYTES = 48 * 2**20  # thumbnails of inputs and reconstructions together, at most
MAX_BARS = 64  # values of a non-image sample shown in its bar strip
CONV_GRID = 48  # decodes per side of the conv decoder's lookup grid
GRID_MARGIN = 0.1  # the grid covers the codes' bounding box widened by this fraction per side
DTYPES = {"float32": np.float32, "uint8": np.uint8, "int32": np.int32}


# -- the binary container ------------------------------------------------------------------

def pack(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """meta (JSON) and named arrays (float32, uint8 or int32) as one blob; its header's "id"
    is a hash of the content, which names the payload in the page."""
    specs, chunks, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {a.dtype} is not one of {', '.join(DTYPES)}")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset}
        pad = -len(raw) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    body = b"".join(chunks)
    digest = hashlib.blake2b(json.dumps([meta, specs], sort_keys=True).encode() + body, digest_size=8)
    header = json.dumps({"id": digest.hexdigest(), "meta": meta, "arrays": specs}).encode()
    header += b" " * (-len(header) % 8)
    return MAGIC + struct.pack("<I", len(header)) + header + body


def unpack(blob: bytes) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(id, meta, arrays) of a blob made by pack."""
    if blob[:4] != MAGIC:
        raise ValueError("not a latent map payload")
    (n,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8:8 + n])
    start = 8 + n
    arrays = {}
    for name, s in header["arrays"].items():
        dtype = np.dtype(DTYPES[s["dtype"]]).newbyteorder("<")
        count = int(np.prod(s["shape"], dtype=np.int64))
        arrays[name] = np.frombuffer(blob, dtype, count, start + s["offset"]).reshape(s["shape"])
    return header["id"], header["meta"], arrays


def payload_id(blob: bytes) -> str:
    return unpack(blob)[0]


# -- which points ----------------------------------------------------------------------------

def shown_points(n: int, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """The test indices drawn: all of them, or above max_points (MAX_POINTS) a seeded
    subsample (sorted)."""
    max_points = MAX_POINTS if max_points is None else max_points
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def to_uint8_images(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) values in [0, 1] -> (N, H, W, C) uint8, round(255 * clip(v, 0, 1))."""
    a = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    return np.moveaxis(np.round(a * 255).astype(np.uint8), 1, -1)


# -- the plane the cursor decodes on ---------------------------------------------------------

def plane(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), axes (2, d)) with z = mean + u * axes[0] + v * axes[1] for a point (u, v)
    of the map. d <= 2: the latent coordinates themselves (mean 0; d = 1 has v unused);
    d > 2: the first two principal components of the codes, through their mean (the PCA
    view's axes, explore.project)."""
    mu = np.asarray(mu, dtype=np.float64)
    d = mu.shape[1]
    if d <= 2:
        return np.zeros(d), np.eye(2, d)
    proj = explore.project(mu, "PCA")
    return proj.pca_mean, proj.pca_components


def plane_codes(mean: np.ndarray, axes: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Points (M, 2) of the plane -> codes (M, d)."""
    return mean[None, :] + np.asarray(uv, dtype=np.float64) @ axes


# -- the decoder, for the page ---------------------------------------------------------------

# what map.js applies to the last layer's output to get E[x|z], per likelihood (likelihood.mean)
OUTPUTS = {"gaussian": "identity", "bernoulli": "sigmoid", "continuous-bernoulli": "cb_mean"}
CB_TAYLOR_BELOW = ContinuousBernoulli.TAYLOR_BELOW  # |eta| under which its mean is a series


def decoder_layers(run: Run) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The decoder of an mlp or linear run as affine layers [(W (out, in), b (out,)), ...],
    ReLU between them; None for an architecture the page does not run (conv)."""
    net = run.model.decoder_net
    if isinstance(net, torch.nn.Linear):
        linears = [net]
    elif isinstance(net, torch.nn.Sequential) and all(isinstance(m, (torch.nn.Linear, torch.nn.ReLU)) for m in net):
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    else:
        return None
    return [(m.weight.detach().cpu().numpy().astype(np.float32), m.bias.detach().cpu().numpy().astype(np.float32))
            for m in linears]


def decode_like_the_page(layers: list[tuple[np.ndarray, np.ndarray]], output: str, z: np.ndarray) -> np.ndarray:
    """What map.js computes from the sent weights, in float64: z (M, d) -> E[x|z] (M, D). A
    reference for the tests of the payload (the browser test compares map.js with torch)."""
    h = np.asarray(z, dtype=np.float64)
    for k, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64).T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    if output == "sigmoid":
        return 1 / (1 + np.exp(-h))
    if output == "cb_mean":
        small = np.abs(h) < CB_TAYLOR_BELOW
        safe = np.where(small, 1.0, h)
        with np.errstate(over="ignore"):  # -expm1(-h) = -inf for h << 0: the mean is then -1/h, as in JS
            return np.where(small, 0.5 + h / 12 - h**3 / 720 + h**5 / 30240, 1 / (-np.expm1(-safe)) - 1 / safe)
    return h


def extent(uv: np.ndarray, margin: float = GRID_MARGIN) -> tuple[list[float], list[float]]:
    """The bounding box of points (M, 2), widened by `margin` of its size per side: (lo, hi)."""
    lo, hi = uv.min(0), uv.max(0)
    pad = np.maximum(hi - lo, 1e-3) * margin
    return (lo - pad).tolist(), (hi + pad).tolist()


def grid_points(lo, hi, n: int = CONV_GRID) -> np.ndarray:
    """An n x n grid over [lo, hi] (2-D): (n*n, 2), row r (v from lo to hi), column c (u),
    cell r * n + c."""
    u = np.linspace(lo[0], hi[0], n)
    v = np.linspace(lo[1], hi[1], n)
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu.ravel(), vv.ravel()], 1)


# -- the payloads ----------------------------------------------------------------------------

def samples_payload(run: Run, enc: explore.Encoded, recon: np.ndarray,
                    manifold: tuple[np.ndarray, float] | None = None) -> bytes:
    """Thumbnails (or bar strips), the decoder and the plane of one checkpoint. recon (N, *shape):
    f(mu(x)) per test sample; manifold: the decoded-grid picture laid under a d = 2 map
    (pictures.manifold_background), or None."""
    shown = shown_points(enc.n)
    mean, axes = plane(enc.mu)
    uv = (enc.mu - mean) @ axes.T  # (N, 2) the codes' places on the plane: the map's own coordinates
    meta: dict = {"n": int(enc.n), "latent_dim": int(enc.latent_dim), "is_image": bool(enc.is_image),
                  "shape": list(run.model.data_shape), "arch": run.config.model.arch,
                  "likelihood": run.config.model.likelihood,
                  "output": OUTPUTS.get(run.config.model.likelihood)}
    arrays: dict[str, np.ndarray] = {"plane_mean": mean.astype(np.float32), "plane_axes": axes.astype(np.float32)}

    if enc.is_image:
        c, h, w = run.model.data_shape
        per_sample = 2 * h * w * c
        atlas = shown if len(shown) * per_sample <= MAX_ATLAS_BYTES else \
            shown_points(enc.n, MAX_ATLAS_BYTES // per_sample, seed=1)
        arrays["atlas_index"] = atlas.astype(np.int32)
        arrays["atlas_x"] = to_uint8_images(enc.x[atlas])
        arrays["atlas_recon"] = to_uint8_images(recon[atlas])
        meta["thumbnails"] = f"{len(atlas)} of {enc.n} test samples" if len(atlas) < enc.n else "all"
    else:
        bars = min(MAX_BARS, int(np.prod(enc.x.shape[1:])))
        flat_x = enc.x.reshape(enc.n, -1)[shown, :bars]
        arrays["atlas_index"] = shown.astype(np.int32)
        arrays["bars_x"] = flat_x.astype(np.float32)
        arrays["bars_recon"] = recon.reshape(enc.n, -1)[shown, :bars].astype(np.float32)
        meta["bars"] = bars
        meta["feature_names"] = explore.feature_names(enc)[:bars]  # the bars' names, for the hover
        scales = explore.bar_scales(np.concatenate([flat_x, arrays["bars_recon"]]))
        meta["bar_range"], meta["bar_ranges"] = scales["range"], scales["ranges"]  # ranges: one per feature, or None

    # the page runs the decoder where it knows the architecture and the likelihood's mean
    layers = decoder_layers(run) if run.config.model.likelihood in OUTPUTS else None
    if layers is not None:
        meta["decoder"] = {"kind": "mlp", "layers": len(layers), "cb_taylor_below": CB_TAYLOR_BELOW}
        for k, (wk, bk) in enumerate(layers):
            arrays[f"w{k}"], arrays[f"b{k}"] = wk, bk
    elif enc.is_image:  # conv (or a likelihood map.js does not know): a dense grid of decodes, looked up
        lo, hi = extent(uv)
        n = CONV_GRID
        decoded = run.decode(plane_codes(mean, axes, grid_points(lo, hi, n))).numpy()
        arrays["conv_grid"] = to_uint8_images(decoded)
        meta["decoder"] = {"kind": "grid", "n": n, "lo": lo, "hi": hi}
    if manifold is not None:
        picture, half = manifold
        arrays["manifold"] = np.asarray(picture, dtype=np.uint8)
        meta["manifold_half"] = float(half)
    return pack(meta, arrays)


def _hex_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def viridis(n: int = 256) -> np.ndarray:
    """Plotly's Viridis colour scale sampled at n points: (n, 3) uint8."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    return np.array([unlabel_rgb(c) for c in sample_colorscale("Viridis", list(np.linspace(0, 1, n)))]).round() \
        .astype(np.uint8)


def category_label(name: str, value: float, category_names: dict[float, str] | None = None) -> str:
    """A category's legend entry: its name where the data has one ("class_1"), else the
    label's name and the value ("digit 3")."""
    names = category_names or {}
    return names[float(value)] if float(value) in names else f"{name} {value:g}"


def category_hover(name: str, value: float, category_names: dict[float, str] | None = None) -> str:
    """What a hover says of a point's category: "target: class_1" (a named category), else
    "digit 3"."""
    names = category_names or {}
    return f"{name}: {names[float(value)]}" if float(value) in names else f"{name} {value:g}"


def colours(values: np.ndarray | None, discrete: bool, name: str, palette: list[str],
            category_names: dict[float, str] | None = None) -> tuple[np.ndarray, dict]:
    """Point colours (N, 3) uint8 and the legend: {"kind": "none" | "categories" | "scale", ...}.
    Categories take palette's colours in the order of their sorted values (as charts.latent_map
    does); a value scale is Viridis from its minimum to its maximum."""
    if values is None:
        return np.zeros((0, 3), np.uint8), {"kind": "none"}
    v = np.asarray(values, dtype=np.float64)
    if discrete:
        cats = np.unique(v)
        lut = np.array([_hex_rgb(palette[i % len(palette)]) for i in range(len(cats))], np.uint8)
        rgb = lut[np.searchsorted(cats, v)]
        legend = {"kind": "categories", "name": name,
                  "items": [{"label": category_label(name, c, category_names),
                             "hover": category_hover(name, c, category_names),
                             "color": palette[i % len(palette)]} for i, c in enumerate(cats)]}
        return rgb, legend
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    t = np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)
    lut = viridis()
    rgb = lut[np.clip(np.nan_to_num(t) * 255, 0, 255).round().astype(int)]
    stops = ["#%02x%02x%02x" % tuple(int(c) for c in lut[k]) for k in range(0, 256, 32)] + \
        ["#%02x%02x%02x" % tuple(int(c) for c in lut[255])]
    return rgb, {"kind": "scale", "name": name, "min": lo, "max": hi, "stops": stops}


def points_payload(xy: np.ndarray, values: np.ndarray | None, discrete: bool, color_name: str,
                   palette: list[str], category_names: dict[float, str] | None = None,
                   snapshots: tuple[np.ndarray, np.ndarray] | None = None, checkpoint_epoch: int | None = None) -> bytes:
    """The drawn points: where (xy (N, 2) of the projection), their colours and the legend;
    with snapshots (epochs (S,), places (S, n, 2) of the first n test samples, projected as
    xy is) also where they were at those epochs, for the epoch player."""
    shown = shown_points(len(xy))
    rgb, legend = colours(values, discrete, color_name, palette, category_names)
    if values is None:
        rgb = np.tile(np.array(_hex_rgb(palette[0]), np.uint8), (len(xy), 1))
    meta = {"n": int(len(xy)), "shown": int(len(shown)), "legend": legend}
    arrays = {"xy": np.asarray(xy, dtype=np.float32)[shown], "rgb": rgb[shown], "index": shown.astype(np.int32)}
    if values is not None:  # what the hover names: each point's category (legend item) or value
        v = np.asarray(values, dtype=np.float64)[shown]
        if legend["kind"] == "categories":
            arrays["category"] = np.searchsorted(np.unique(np.asarray(values, dtype=np.float64)), v).astype(np.int32)
        else:
            arrays["value"] = v.astype(np.float32)
    if snapshots is not None and len(snapshots[0]):
        epochs, places = snapshots
        frames = np.full((len(epochs), len(shown), 2), np.nan, np.float32)  # NaN: not in the snapshot
        inside = shown < places.shape[1]
        frames[:, inside] = places[:, shown[inside]]
        arrays["snapshots"] = frames
        meta["snapshot_epochs"] = [int(e) for e in epochs]
        meta["snapshot_samples"] = int(places.shape[1])
        meta["checkpoint_epoch"] = checkpoint_epoch
    return pack(meta, arrays)


def project_snapshots(mu: np.ndarray, proj: explore.Projection) -> np.ndarray | None:
    """Snapshot codes (S, n, d) in the map's plane: (S, n, 2) for the identity and PCA views
    (the checkpoint's own axes, so the frames line up with the map); None for t-SNE and UMAP,
    which have no map for other codes."""
    if proj.method not in ("identity", "PCA"):
        return None
    s, n, d = mu.shape
    return proj.transform(mu.reshape(s * n, d)).reshape(s, n, 2)


def inputs_payload(x: np.ndarray, is_image: bool, feature_names: list[str] | None = None) -> bytes:
    """A samples payload of the inputs alone (no reconstruction, no decoder): the live map of a
    run still training, whose weights change every epoch. feature_names: the D names of a
    non-image sample's values (else x1..xD)."""
    n = len(x)
    shown = shown_points(n)
    meta: dict = {"n": int(n), "latent_dim": 0, "is_image": bool(is_image), "shape": list(x.shape[1:])}
    arrays: dict[str, np.ndarray] = {"atlas_index": shown.astype(np.int32)}
    if is_image:
        c, h, w = x.shape[1:]
        k = min(len(shown), max(1, MAX_ATLAS_BYTES // (h * w * c)))
        arrays["atlas_index"] = shown[:k].astype(np.int32)
        arrays["atlas_x"] = to_uint8_images(x[shown[:k]])
        meta["thumbnails"] = "all" if k == n else f"{k} of {n} test samples"
    else:
        bars = min(MAX_BARS, int(np.prod(x.shape[1:])))
        arrays["bars_x"] = x.reshape(n, -1)[shown, :bars].astype(np.float32)
        meta["bars"] = bars
        d = int(np.prod(x.shape[1:]))
        names = list(feature_names) if feature_names and len(feature_names) == d else [f"x{j + 1}" for j in range(d)]
        meta["feature_names"] = names[:bars]
        scales = explore.bar_scales(arrays["bars_x"])
        meta["bar_range"], meta["bar_ranges"] = scales["range"], scales["ranges"]
    return pack(meta, arrays)
