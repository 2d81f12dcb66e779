"""Generate: drop the encoder, draw z from the prior, decode (Fig 1.7); latent traversals."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import charts
from explorer.services import cached, explore, exports, pictures
from explorer.views import common

TRAVERSAL_SPAN = 3.0  # each traversal moves one z_j from -3 to 3


def main() -> None:
    page = common.explore_page("Generate")
    if page is None:
        return
    prior_samples(page)
    latent_traversals(page)


# -- samples from the prior ----------------------------------------------------------------------

def prior_samples(page: common.ExplorePage) -> None:
    st.subheader("Samples from the prior")
    st.caption("z ~ N(0, I), then x = f(z): the decoder's mean image for each z (Fig 1.7). "
               "No encoder and no data are involved.")
    n, seed = sample_controls()
    samples = cached.samples(page.checkpoint, n, seed)
    if page.enc.is_image:
        grid = pictures.png(samples, ncols=min(n, 16), size=56)
        st.image(grid, caption=f"{n} samples, seed {seed}",  # alt: the accessible name (a caption is not one)
                 alt=f"{n} images decoded from z ~ N(0, I), seed {seed}")
        st.download_button("Sample grid (PNG)", grid, key="download_samples", icon=":material/download:",
                           file_name=f"{exports.file_stem(page.summary.name, 'samples', f'seed{seed}')}.png",
                           mime="image/png", on_click="ignore")
    elif samples.ndim == 2 and samples.shape[1] == 2:
        common.chart(charts.data_scatter(page.enc.x, {"decoded prior samples": samples},
                                         "Decoded prior samples over the test data",
                                         explore.feature_names(page.enc)), key="gen_scatter")
    else:
        names = explore.feature_names(page.enc)
        flat = samples.reshape(n, -1)
        common.chart(charts.feature_heatmap(flat, names, [f"sample {i + 1}" for i in range(n)],
                                            f"{n} decoded prior samples, every feature", row_title="sample"),
                     key="gen_heatmap")
        st.dataframe({name: np.round(flat[:, j], 4) for j, name in enumerate(names)}, key="gen_table",
                     height=min(400, 38 + 35 * n))
        st.download_button("Samples (CSV)", exports.vectors_csv(flat, names), key="download_samples_csv",
                           file_name=f"{exports.file_stem(page.summary.name, 'samples', f'seed{seed}')}.csv",
                           mime="text/csv", icon=":material/download:", on_click="ignore")


def sample_controls() -> tuple[int, int]:
    """(how many samples, their seed), and a button for a new seed."""
    c1, c2, c3 = st.columns([3, 2, 2])
    n = c1.slider("Number of samples", 4, 100, 64, step=4, key="n_samples")
    if "sample_seed" not in st.session_state:
        st.session_state["sample_seed"] = 0
    seed = c2.number_input("Seed", 0, 10**9, step=1, key="sample_seed")
    c3.button("New samples", key="new_samples", on_click=_new_samples, icon=":material/casino:")
    return n, int(seed)


def _new_samples() -> None:
    st.session_state["sample_seed"] = int(st.session_state.get("sample_seed", 0)) + 1


# -- latent traversals ---------------------------------------------------------------------------

def latent_traversals(page: common.ExplorePage) -> None:
    enc = page.enc
    st.subheader("Latent traversals")
    order = explore.dims_by_kl(enc.kl_per_dim)
    kl_dims = enc.kl_per_dim.mean(0)
    st.caption("Each row starts from z = 0 and moves one latent dimension from -3 to 3, the others held at 0. "
               "Rows are ordered by the dimension's mean KL over the test set (nats per sample), largest "
               "first: dimensions with KL near 0 are inactive and change nothing.")
    shown, steps = traversal_controls(enc.latent_dim)
    dims = tuple(int(j) for j in order[:shown])
    images = cached.traversals(page.checkpoint, dims, steps, TRAVERSAL_SPAN)
    labels = [f"z{j + 1} (KL {kl_dims[j]:.2f})" for j in dims]
    show_traversals(enc, images, steps, labels, explore.feature_names(enc))
    if enc.is_image:
        st.download_button("Traversal strips (PNG)", pictures.png(images, ncols=steps, size=56),
                           key="download_traversals", icon=":material/download:", on_click="ignore",
                           file_name=f"{exports.file_stem(page.summary.name, 'traversals')}.png", mime="image/png")


def traversal_controls(d: int) -> tuple[int, int]:
    """(how many dimensions, in order of KL; steps per dimension)."""
    c1, c2 = st.columns(2)
    shown = c1.slider("Dimensions shown", 1, d, min(d, 8), key="traversal_dims") if d > 1 else 1
    steps = c2.slider("Steps per dimension", 3, 15, 9, key="traversal_steps")
    return shown, steps


def show_traversals(enc: explore.Encoded, images: np.ndarray, steps: int, labels: list[str],
                    names: list[str]) -> None:
    """One row per dimension: images, points over the 2-D data, or for other vectors a heatmap
    per dimension (a row per z value, a column per named feature)."""
    if enc.is_image:
        st.image(pictures.png(images, ncols=steps, size=56),
                 caption="rows, top to bottom: " + ", ".join(labels),
                 alt=f"latent traversals: {len(labels)} rows of {steps} images, one row per latent dimension")
    elif images.ndim == 2 and images.shape[1] == 2:
        pts = {labels[r]: images[r * steps:(r + 1) * steps] for r in range(len(labels))}
        common.chart(charts.data_scatter(enc.x, pts, "Traversals decoded, in data space", names),
                     key="traversal_scatter")
    else:  # vectors: one heatmap per dimension, a row per z value, every feature by name
        values = np.linspace(-TRAVERSAL_SPAN, TRAVERSAL_SPAN, steps)
        for r, label in enumerate(labels):
            rows = images[r * steps:(r + 1) * steps].reshape(steps, -1)
            j = label.split(" ")[0]
            common.chart(charts.feature_heatmap(rows, names, [f"{j} = {v:+.2f}" for v in values],
                                                f"Traversal of {label}: the decoded features as {j} moves",
                                                row_title=j), key=f"traversal_heatmap_{r}")


if __name__ == "__main__":
    main()
