"""What the Interpolate page's component is sent, once per path: every decoded step of the
path from A to B and the small latent map the current z(t) moves on, packed into one
`bytes` message that the page unpacks (explorer/components/interpolation/interpolation.js).

Dragging t then needs nothing from the server: the page picks frame k = round(t (T - 1))
and draws it. With T = explore.T_STEPS = 101 steps, frame k is the decoder's mean at
z(t_k), t_k = k / 100, exactly the slider's 0.01 steps.

Layout of the bytes (little-endian):

    [0:4]       uint32 n, the length of the header
    [4:4+n]     the header, UTF-8 JSON (padded with spaces so the blobs start at a multiple of 4)
    [4+n:]      the blobs, each at an offset (a multiple of 4) from there that the header names

Header: {"version", "id", "t0", "method", "kind" ("image" or "values"), "steps", "t",
"shape", "range" ([lo, hi] of the bars, holding 0), "ranges" (one [lo, hi] per value when their
spans differ too much for one scale, explore.bar_scales; else null), "feature_names" (the D values' names,
non-image data; else []), "map": {...},
"blobs": {name: [offset, nbytes, dtype, shape]}}.
Blobs: "frames" (uint8 (T, H, W, C), the decoded means clipped to [0, 1] times 255, rounded)
for images, or "values" (float32 (T, D)) for other data; "points" (float32 (N, 2), the
codes on the map), "colors" (uint8 (N,), an index into map.palette), "path" (float32 (T, 2)).

Arrays in, bytes out; no streamlit. unpack() is the page's reading, in Python, for tests.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from explorer.services import explore

VERSION = 1
MAP_POINTS = 20_000  # above this many codes the map shows a random subsample (seed 0) of them
COLOR_BINS = 8  # a continuous colour option is shown in this many bins
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]  # plotly's / matplotlib's tab10, the latent map's categories
SEQUENTIAL = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]  # viridis
NO_COLOR = ["#5b6b8c"]


def frames_uint8(images: np.ndarray) -> np.ndarray:
    """Decoded means (T, C, H, W) -> (T, H, W, C) uint8: clipped to [0, 1], times 255, rounded
    (what pictures.png shows, one byte per channel)."""
    x = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0)
    return np.ascontiguousarray(np.round(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1))


def map_colors(values: np.ndarray | None, discrete: bool) -> tuple[np.ndarray, list[str]]:
    """Per-point colour indices (N,) uint8 and their palette: categories cycle through tab10,
    continuous values fall into COLOR_BINS equal-width bins of viridis, none: one colour."""
    if values is None:
        return np.zeros(0, np.uint8), NO_COLOR
    v = np.asarray(values, dtype=np.float64)
    if discrete:
        _, inverse = np.unique(v, return_inverse=True)
        return (inverse % len(PALETTE)).astype(np.uint8), PALETTE
    lo, hi = np.nanmin(v), np.nanmax(v)
    scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return np.clip((scaled * COLOR_BINS).astype(int), 0, COLOR_BINS - 1).astype(np.uint8), SEQUENTIAL


def map_subsample(n: int, keep: tuple[int, ...], limit: int = MAP_POINTS) -> np.ndarray:
    """The codes the map shows: all n, or `limit` of them at random (seed 0) with `keep` among them."""
    if n <= limit:
        return np.arange(n)
    keep = sorted(set(keep))
    others = np.setdiff1d(np.arange(n), keep)
    chosen = np.random.default_rng(0).choice(others, size=limit - len(keep), replace=False)
    return np.sort(np.concatenate([chosen, keep]))


def payload(frames: explore.PathFrames, is_image: bool, points: np.ndarray, path_xy: np.ndarray,
            a: int, b: int, t0: float, method: str, axis_titles: tuple[str, str] = ("", ""),
            color_values: np.ndarray | None = None, discrete: bool = False, color_name: str = "",
            feature_names: list[str] | None = None, reference: np.ndarray | None = None) -> bytes:
    """The component's message for one path.

    frames: the path decoded at T steps (explore.path_frames); points (N, 2): the test set's
    codes on the map; path_xy (T, 2): z(t_k) on the same map; a, b: the endpoints' test
    indices; t0: where the slider starts (0..1); color_values (N,): what colours the points;
    feature_names: the D names of the decoded values (non-image data), for the bars;
    reference (N, D): values that set the bars' scale with the path's own (the test set: on a
    scale per feature, a bar shows where in that feature's range the path is)."""
    steps = len(frames.t)
    blobs: dict[str, np.ndarray] = {}
    if is_image:
        blobs["frames"] = frames_uint8(frames.images)  # (T, H, W, C)
        shape = list(blobs["frames"].shape[1:])
        value_range, value_ranges = [0.0, 1.0], None
    else:
        values = np.asarray(frames.images, dtype=np.float32).reshape(steps, -1)  # (T, D)
        blobs["values"] = values
        shape = [values.shape[1]]
        scaled = values if reference is None else np.concatenate([np.asarray(reference).reshape(-1, values.shape[1]), values])
        scales = explore.bar_scales(scaled, include_zero=True)
        value_range, value_ranges = scales["range"], scales["ranges"]
    shown = map_subsample(len(points), (a, b))
    colors, palette = map_colors(None if color_values is None else np.asarray(color_values)[shown], discrete)
    blobs["points"] = np.asarray(points, dtype=np.float32)[shown]  # (N, 2)
    blobs["colors"] = colors  # (N,) or (0,)
    blobs["path"] = np.asarray(path_xy, dtype=np.float32).reshape(steps, 2)  # (T, 2)
    position = {int(i): j for j, i in enumerate(shown)}

    table, body, offset = {}, [], 0
    for name, arr in blobs.items():
        raw = np.ascontiguousarray(arr).tobytes()
        table[name] = [offset, len(raw), str(arr.dtype), list(arr.shape)]
        pad = (-len(raw)) % 4
        body.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    body_bytes = b"".join(body)
    header = {"version": VERSION, "method": method,
              "kind": "image" if is_image else "values", "steps": steps,
              "t": [round(float(t), 6) for t in frames.t], "shape": shape, "range": value_range,
              "ranges": value_ranges,
              "feature_names": [str(n) for n in feature_names or []],
              "map": {"a": position[int(a)], "b": position[int(b)], "index": shown.tolist(),
                      "palette": palette, "color_name": color_name, "axis_titles": list(axis_titles),
                      "shown": int(len(shown)), "total": int(len(points))},
              "blobs": table}
    # The id names what the page draws (not where the slider starts), so that the page can tell
    # a new path from the same path sent again.
    header["id"] = hashlib.sha1(json.dumps(header, sort_keys=True).encode() + body_bytes).hexdigest()[:16]
    header["t0"] = round(float(t0), 2)
    head = json.dumps(header).encode()
    head += b" " * ((-(4 + len(head))) % 4)
    return struct.pack("<I", len(head)) + head + body_bytes


def unpack(message: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, blobs) of a payload(): what the page reads from it."""
    (n,) = struct.unpack_from("<I", message, 0)
    header = json.loads(message[4:4 + n].decode())
    base = 4 + n
    blobs = {name: np.frombuffer(message, dtype=dtype, count=int(np.prod(shape)) if shape else 0,
                                 offset=base + off).reshape(shape)
             for name, (off, _nbytes, dtype, shape) in header["blobs"].items()}
    return header, blobs
