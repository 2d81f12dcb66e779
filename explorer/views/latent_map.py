"""Latent map: where the encoder puts each test sample (its posterior mean mu(x))."""

from __future__ import annotations

import streamlit as st

from explorer import charts, state
from explorer.services import explore
from explorer.views import common

MANIFOLD_N = 15  # decoded images per side of the manifold grid
MANIFOLD_SPAN = 3.0  # the grid covers [-3, 3]^2, where the prior N(0, I) has its mass


def projection_picker(latent_dim: int) -> str:
    """For d > 2 a choice of projection to the plane (kept across pages)."""
    if latent_dim <= 2:
        return "PCA"
    options = explore.available_projections()
    state.seed_widget("projection", "proj", "PCA")
    if st.session_state.get("projection") not in options:
        st.session_state["projection"] = "PCA"
    method = st.radio("Projection to the plane", options, key="projection", horizontal=True,
                      help="PCA is instant and linear; t-SNE keeps neighbours together but distorts "
                           "distances (a few seconds, then cached). UMAP appears when umap-learn is installed.")
    state.set("proj", method)
    return method


def projected(path, method: str, n: int) -> explore.Projection:
    if method == "PCA":
        return explore.cached_projection(path, method)
    with st.spinner(f"Computing the {method} projection of {n} codes (cached afterwards)..."):
        return explore.cached_projection(path, method)


def main() -> None:
    st.title("Latent map")
    res = common.trained_run()
    if res is None:
        return
    summary, run = res
    enc = explore.cached_encoded(summary.path)
    d = enc.latent_dim
    st.caption(f"Each point is one test sample x of **{summary.config.data}**, placed at its posterior mean "
               f"mu(x) = E[z|x] under q(z|x). Latent size d = {d}"
               + (" (drawn as is)." if d <= 2 else "; projected to the plane.")
               + " Click a point to see its input, its reconstruction and its ELBO terms.")

    c1, c2, c3 = st.columns([2, 3, 2])
    with c1:
        options = explore.color_options(enc)
        state.seed_widget("color_by", "color", options[0])
        if st.session_state.get("color_by") not in options:
            st.session_state["color_by"] = options[0]
        color_by = st.selectbox("Colour points by", options, key="color_by",
                                help="A label of the data, a per-sample ELBO term (nats), or one latent coordinate.")
        state.set("color", color_by)
    with c2:
        method = projection_picker(d)
    with c3:
        show_grid = show_contours = False
        if d == 2:
            show_grid = st.checkbox("Decoded manifold grid", key="show_manifold", disabled=not enc.is_image,
                                    help="Decode a 15x15 grid of codes z in [-3, 3]^2 and draw the images "
                                         "under the points (dark on light), each centred on its code: what "
                                         "the decoder makes of each place in the latent space.")
            show_contours = st.checkbox("Prior density contours", key="show_contours",
                                        help="Contours of log p(z) = log N(z; 0, I), nats.")

    proj = projected(summary.path, method, enc.n)
    values, discrete = explore.color_values(enc, color_by)
    i = common.selected_index(enc.n)
    background = contours = None
    if show_grid:
        images = explore.cached_manifold(summary.path, MANIFOLD_N, MANIFOLD_SPAN)
        background = explore.manifold_background(images, MANIFOLD_N, MANIFOLD_SPAN)
    if show_contours:
        contours = explore.prior_density_grid()
    fig = charts.latent_map(proj.xy, values, color_by, discrete, proj.axis_titles, selected=i,
                            background=background, contours=contours,
                            category_names=explore.category_names(color_by))

    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(fig, key="latent_map_chart", on_select=_on_select, selection_mode="points",
                        config={"scrollZoom": True, "displaylogo": False})
        st.caption(("Axes: latent coordinates z1, z2. " if d <= 2 else f"Axes: {method} of the {d}-D codes. ")
                   + ("Colour: " + (f"{color_by} (nats per sample, higher is better)."
                                    if color_by in ("ELBO", "recon") else
                                    "KL of q(z|x) to the prior, nats per sample (lower costs less)."
                                    if color_by == "KL" else f"{color_by}."))
                   + " Scroll to zoom, drag to pan.")
    with right:
        st.subheader("Selected sample")
        i = common.sample_input(enc.n)
        recon = explore.cached_reconstructions(summary.path)
        common.show_sample(enc, i, recon[i])
        m1, m2, m3 = st.columns(3)
        m1.metric("recon", f"{enc.recon[i]:.2f}", help="E_q[log p(x|z)], one sample of z, nats")
        m2.metric("-KL", f"{-enc.kl[i]:.2f}", help="-KL(q(z|x) || p(z)), nats")
        m3.metric("ELBO", f"{enc.elbo[i]:.2f}", help="recon - KL, nats per sample, higher is better")
        st.caption("ELBO = recon - KL for this sample, nats (one Monte Carlo draw of z). "
                   "The ELBO breakdown page adds log p(x) and the gap.")
        if enc.labels is not None:
            st.caption(", ".join(f"{n} = {v:g}" for n, v in zip(enc.label_names, enc.labels[i])))
        st.page_link("views/elbo.py", label="ELBO breakdown of this sample", icon=":material/stacked_bar_chart:")


def _on_select() -> None:
    i = common.point_from_event("latent_map_chart")
    if i is not None:
        state.set("sample", i)


if __name__ == "__main__":
    main()
