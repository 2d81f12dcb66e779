"""The views' way to explorer/services/explore.py: each computation memoised per checkpoint.

A `Checkpoint` names a run's weights on disk: the resolved run folder and the modification
time of its model.safetensors (runs.checkpoint_mtime). Every function here takes one as its
first argument and is cached with st.cache_data on it, so a new checkpoint (a run trained
again) is a new cache key and never gets the results of the old one. A view takes
`checkpoint(path)` once per page run and passes it to each call.

Shared by every session (issue 17): what depends on the checkpoint alone (the encoded test
set, its projection, the reconstructions, the manifold grid) is computed once per checkpoint
and the same object is handed to every session (st.cache_resource: no copy per call, so 30
sessions cost one), its arrays made read-only so that no session can change what another
sees. What is keyed on a user's choice as well (endpoints, a sample, a seed) is copied per
call (st.cache_data) and bounded in count and in age (max_entries, TTL_S), so a crowd trying
many choices cannot grow the cache without end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import streamlit as st
import torch

from trainer import Run, evaluate_run

from . import explore
from .runs import checkpoint_mtime, open_run


TTL_S = 3600  # seconds a result keyed on a user's choice is kept after it was computed
T = TypeVar("T")


def _frozen(value: T) -> T:
    """value with its arrays (and a dataclass's array fields) made read-only: it is shared."""
    arrays = [value] if isinstance(value, np.ndarray) else \
        [getattr(value, f.name) for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else []
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return value


class Checkpoint(NamedTuple):
    """A cache key for a run's weights: a tuple of a str and a float, so Streamlit hashes it."""

    path: str  # the run folder, resolved
    mtime: float  # its model.safetensors' modification time, ns (0.0 if there is none)

    def run(self) -> Run:
        """The run, opened (runs.open_run caches the model per checkpoint too)."""
        return open_run(Path(self.path))


def checkpoint(path: Path) -> Checkpoint:
    """The checkpoint a run folder holds now."""
    return Checkpoint(str(Path(path).resolve()), checkpoint_mtime(path))


@st.cache_resource(max_entries=16, show_spinner=False)
def encoded(ckpt: Checkpoint) -> explore.Encoded:
    """The test split encoded, with each sample's ELBO terms (shared, read-only)."""
    return _frozen(explore.encode_test(ckpt.run()))


@st.cache_resource(max_entries=32, show_spinner=False)
def projection(ckpt: Checkpoint, method: str) -> explore.Projection:
    """The test set's posterior means mapped to the plane (shared, read-only)."""
    return _frozen(explore.project(encoded(ckpt).mu, method))


@st.cache_data(max_entries=64, ttl=TTL_S, show_spinner=False)
def path_frames(ckpt: Checkpoint, a: int, b: int, method: str) -> explore.PathFrames:
    """The path from test sample a's code to test sample b's, decoded."""
    mu = encoded(ckpt).mu
    return explore.path_frames(ckpt.run(), mu[a].copy(), mu[b].copy(), method)


@st.cache_resource(max_entries=16, show_spinner=False)
def manifold(ckpt: Checkpoint, n: int, span: float) -> np.ndarray:
    """Decoded means on an n x n grid of 2-D codes over [-span, span]^2 (shared, read-only)."""
    return _frozen(explore.manifold(ckpt.run(), n, span))


@st.cache_data(max_entries=64, ttl=TTL_S, show_spinner=False)
def breakdown(ckpt: Checkpoint, index: int) -> dict:
    """Fig 1.4's numbers for one test sample: recon, kl, elbo, log_px, gap."""
    return explore.sample_breakdown(ckpt.run(), encoded(ckpt).x[index].copy())


@st.cache_data(max_entries=32, ttl=TTL_S, show_spinner=False)
def samples(ckpt: Checkpoint, n: int, seed: int) -> np.ndarray:
    """n decoded samples of the prior, z ~ N(0, I), x = f(z)."""
    return ckpt.run().generate(n, seed).numpy()


@st.cache_data(max_entries=16, ttl=TTL_S, show_spinner=False)
def traversals(ckpt: Checkpoint, dims: tuple[int, ...], steps: int, span: float) -> np.ndarray:
    """One row of decoded codes per latent dimension in dims, from -span to span."""
    return explore.traversals(ckpt.run(), list(dims), steps, span)


@st.cache_resource(max_entries=16, show_spinner=False)
def reconstructions(ckpt: Checkpoint) -> np.ndarray:
    """f(mu(x)) for every test sample: the decoded posterior means, (N, *shape) (shared, read-only)."""
    return _frozen(ckpt.run().decode(encoded(ckpt).mu.copy()).numpy())


@st.cache_data(max_entries=64, ttl=TTL_S, show_spinner=False)
def evaluation(ckpt: Checkpoint, k: int = explore.EVAL_K) -> dict:
    """trainer.evaluate_run on the test split: elbo, recon, kl, log_px (K = k), gap, active
    units; per-sample means, nats."""
    return evaluate_run(ckpt.run(), "test", k=k)


# -- the in-page latent map's payloads (explorer/services/inpage.py) ----------------------------

@st.cache_data(max_entries=8, show_spinner=False)
def map_samples(ckpt: Checkpoint, manifold_n: int = 15, manifold_span: float = 3.0) -> bytes:
    """Thumbnails (or bar strips), the decoder and its plane, and for an image run with d = 2
    the decoded-manifold picture: one blob, sent to the page once per checkpoint."""
    from . import inpage, pictures

    enc = encoded(ckpt)
    background = None
    if enc.is_image and enc.latent_dim == 2:
        background = pictures.manifold_background(manifold(ckpt, manifold_n, manifold_span), manifold_n,
                                                  manifold_span, scale=1)  # the page scales it up
    return inpage.samples_payload(ckpt.run(), enc, reconstructions(ckpt), background)


@st.cache_data(max_entries=32, show_spinner=False)
def map_points(ckpt: Checkpoint, method: str, color_by: str, palette: tuple[str, ...]) -> bytes:
    """The points of the map in one projection, coloured by one option: one blob."""
    from . import inpage

    from trainer import snapshots

    enc = encoded(ckpt)
    values, discrete = explore.color_values(enc, color_by)
    proj = projection(ckpt, method)
    saved = snapshots.read(ckpt.path)  # the codes during training, for the epoch player
    frames = None
    if saved is not None and (places := inpage.project_snapshots(saved[1], proj)) is not None:
        frames = (saved[0], places)
    status = ckpt.run().status or {}
    return inpage.points_payload(proj.xy, values, discrete, color_by, list(palette),
                                 explore.category_names(color_by, enc), frames, status.get("epoch"))


@st.cache_data(max_entries=4, show_spinner=False)
def live_inputs(data: str, seed: int, n: int) -> tuple[bytes, np.ndarray | None, list[str]]:
    """For the live map of a run still training: its first n test inputs (those the snapshots
    hold) as a samples payload, and their labels (n, F) with the labels' names."""
    from trainer import load_dataset

    from . import inpage

    ds = load_dataset(data, seed)
    x = ds.x_test[0:n]
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    labels = None if ds.y_test is None else np.asarray(ds.y_test)[:n]
    return inpage.inputs_payload(x, ds.is_image, list(ds.feature_names)), labels, list(ds.label_names)
