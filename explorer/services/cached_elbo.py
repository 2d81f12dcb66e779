"""The "Inside the ELBO" page's computations (explorer/services/inside_elbo.py), memoised
per checkpoint with st.cache_data, as explorer/services/cached.py does for the other views."""

from __future__ import annotations

import streamlit as st

from . import inside_elbo
from .cached import Checkpoint, encoded


@st.cache_data(max_entries=32, show_spinner=False)
def reparameterization(ckpt: Checkpoint, index: int) -> inside_elbo.Reparameterization:
    return inside_elbo.reparameterization(ckpt.run(), encoded(ckpt).x[index])


@st.cache_data(max_entries=32, show_spinner=False)
def gradient_comparison(ckpt: Checkpoint, index: int) -> dict:
    return inside_elbo.gradient_comparison(ckpt.run(), encoded(ckpt).x[index])


@st.cache_data(max_entries=32, show_spinner=False)
def true_posterior(ckpt: Checkpoint, index: int) -> dict:
    return inside_elbo.true_posterior(ckpt.run(), encoded(ckpt).x[index])


@st.cache_data(max_entries=32, show_spinner=False)
def theorem_for_sample(ckpt: Checkpoint, index: int) -> dict | None:
    return inside_elbo.theorem_for_sample(ckpt.run(), encoded(ckpt).x[index])


@st.cache_data(max_entries=16, show_spinner=False)
def distance_from_truth(ckpt: Checkpoint) -> dict:
    return inside_elbo.distance_from_truth(ckpt.run(), encoded(ckpt).x)


@st.cache_data(max_entries=16, show_spinner=False)
def kl_split(ckpt: Checkpoint) -> dict:
    enc = encoded(ckpt)
    return inside_elbo.kl_split(enc.mu, enc.logvar)


@st.cache_data(max_entries=32, show_spinner=False)
def importance(ckpt: Checkpoint, index: int) -> dict:
    return inside_elbo.importance(ckpt.run(), encoded(ckpt).x[index])


@st.cache_data(max_entries=16, show_spinner=False)
def linear_landscape(ckpt: Checkpoint) -> dict | None:
    """ELBO(t, s) of Examples 1.3-1.6 for a linear run on linear-gaussian data, with the run's
    saved (t, s) path ("path", or None); None for any other run."""
    run = ckpt.run()
    setting = inside_elbo.linear_gaussian_setting(run)
    if run.config.model.arch != "linear" or setting is None:
        return None
    return {**inside_elbo.linear_landscape(*setting), "path": inside_elbo.saved_path(run)}
