"""Generate: drop the encoder, draw z from the prior, decode (Fig 1.7); latent traversals."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import charts
from explorer.services import explore
from explorer.views import common


def _new_samples() -> None:
    st.session_state["sample_seed"] = int(st.session_state.get("sample_seed", 0)) + 1


def main() -> None:
    st.title("Generate")
    res = common.trained_run()
    if res is None:
        return
    summary, run = res
    enc = explore.cached_encoded(summary.path)
    d = enc.latent_dim

    st.subheader("Samples from the prior")
    st.caption("z ~ N(0, I), then x = f(z): the decoder's mean image for each z (Fig 1.7). "
               "No encoder and no data are involved.")
    c1, c2, c3 = st.columns([3, 2, 2])
    n = c1.slider("Number of samples", 4, 100, 64, step=4, key="n_samples")
    if "sample_seed" not in st.session_state:
        st.session_state["sample_seed"] = 0
    seed = c2.number_input("Seed", 0, 10**9, step=1, key="sample_seed")
    c3.button("New samples", key="new_samples", on_click=_new_samples, icon=":material/casino:")
    samples = explore.cached_samples(summary.path, n, int(seed))
    if enc.is_image:
        st.image(explore.png(samples, ncols=min(n, 16), size=56), caption=f"{n} samples, seed {seed}")
    elif samples.ndim == 2 and samples.shape[1] == 2:
        st.plotly_chart(charts.data_scatter(enc.x, {"decoded prior samples": samples},
                                            "Decoded prior samples over the test data"), key="gen_scatter")
    else:
        st.dataframe(samples.reshape(n, -1)[:20], key="gen_table")

    st.subheader("Latent traversals")
    order = explore.dims_by_kl(enc.kl_per_dim)
    kl_dims = enc.kl_per_dim.mean(0)
    st.caption("Each row starts from z = 0 and moves one latent dimension from -3 to 3, the others held at 0. "
               "Rows are ordered by the dimension's mean KL over the test set (nats per sample), largest "
               "first: dimensions with KL near 0 are inactive and change nothing.")
    c1, c2 = st.columns(2)
    shown = c1.slider("Dimensions shown", 1, d, min(d, 8), key="traversal_dims") if d > 1 else 1
    steps = c2.slider("Steps per dimension", 3, 15, 9, key="traversal_steps")
    dims = [int(j) for j in order[:shown]]
    images = explore.cached_traversals(summary.path, dims, steps, 3.0)
    labels = [f"z{j + 1} (KL {kl_dims[j]:.2f})" for j in dims]
    if enc.is_image:
        st.image(explore.png(images, ncols=steps, size=56),
                 caption="rows, top to bottom: " + ", ".join(labels))
    elif images.ndim == 2 and images.shape[1] == 2:
        pts = {labels[r]: images[r * steps:(r + 1) * steps] for r in range(len(dims))}
        st.plotly_chart(charts.data_scatter(enc.x, pts, "Traversals decoded, in data space"),
                        key="traversal_scatter")
    else:
        st.dataframe({labels[r]: np.round(images[r * steps:(r + 1) * steps].reshape(steps, -1)[:, 0], 3)
                      for r in range(len(dims))}, key="traversal_table")


if __name__ == "__main__":
    main()
