"""Latent map: where the encoder puts each test sample (its posterior mean mu(x)), drawn in the
page by explorer/components/latent_map/ (hover, zoom, pan and decode at the cursor run there;
a click selects a sample)."""

from __future__ import annotations

import streamlit as st

from explorer import charts, state
from explorer.components import latent_map
from explorer.services import cached, explore, inpage, jobs
from explorer.views import common
from trainer import TrainerError, snapshots
from trainer.runs import load_config, read_data_info

MANIFOLD_N = 15  # decoded images per side of the manifold grid
MANIFOLD_SPAN = 3.0  # the grid covers [-3, 3]^2, where the prior N(0, I) has its mass
CHART_KEY = "latent_map_chart"
LIVE_KEY = "latent_map_live"  # the map of a run still training (its newest snapshot)


def main() -> None:
    page = common.explore_page("Latent map")
    if page is None:
        summary = common.active_summary()
        if summary is not None and summary.state in jobs.ACTIVE:
            live_map(str(summary.path))
        return
    intro(page)
    c1, c2, c3 = st.columns([2, 3, 2])
    with c1:
        color_by = color_picker(page.enc)
    with c2:
        method = projection_picker(page.enc.latent_dim)
    with c3:
        show_grid, show_contours = overlay_switches(page.enc)
    map_and_sample(page, color_by, method, show_grid, show_contours)


@st.fragment
def map_and_sample(page: common.ExplorePage, color_by: str, method: str, show_grid: bool,
                   show_contours: bool) -> None:
    """The map and the selected sample: a click on the map (or a new index) reruns only this
    part of the page, so the panel follows at once; the URL's sample follows too."""
    left, right = st.columns([3, 2])
    with left:
        view = map_view(page, color_by, method, show_grid, show_contours)
        map_chart(view, color_by, method, page.enc.latent_dim)
        if page.enc.n > inpage.MAX_POINTS:
            st.caption(f"Drawn: a seeded subsample of {inpage.MAX_POINTS:,} of the {page.enc.n:,} test samples "
                       "(the same ones every time).")
    with right:
        selected_sample(page)
    state.write_to_url()


def intro(page: common.ExplorePage) -> None:
    d = page.enc.latent_dim
    try:  # the data set's own name (the file's, not its path on the server: data.json)
        data_name = page.run.data_info.get("name") or page.summary.config.data
    except TrainerError:
        data_name = page.summary.config.data
    st.caption(f"Each point is one test sample x of **{data_name}**, placed at its posterior mean "
               f"mu(x) = E[z|x] under q(z|x). Latent size d = {d}"
               + (" (drawn as is)." if d <= 2 else "; projected to the plane.")
               + " Click a point to see its input, its reconstruction and its ELBO terms.")


# -- the controls above the map ------------------------------------------------------------------

def color_picker(enc: explore.Encoded) -> str:
    """What the points are coloured by (kept across pages)."""
    options = explore.color_options(enc)
    state.seed_widget("color_by", "color", options[0])
    if st.session_state.get("color_by") not in options:
        st.session_state["color_by"] = options[0]
    color_by = st.selectbox("Colour points by", options, key="color_by",
                            help="A label of the data, a per-sample ELBO term (nats), or one latent coordinate.")
    state.set("color", color_by)
    return color_by


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


def overlay_switches(enc: explore.Encoded) -> tuple[bool, bool]:
    """For d = 2: (the decoded manifold grid under the points, the prior's density contours)."""
    if enc.latent_dim != 2:
        return False, False
    show_grid = st.checkbox("Decoded manifold grid", key="show_manifold", disabled=not enc.is_image,
                            help="Decode a 15x15 grid of codes z in [-3, 3]^2 and draw the images "
                                 "under the points (dark on light), each centred on its code: what "
                                 "the decoder makes of each place in the latent space.")
    show_contours = st.checkbox("Prior density contours", key="show_contours",
                                help="Contours of log p(z) = log N(z; 0, I), nats.")
    return show_grid, show_contours


# -- the map -------------------------------------------------------------------------------------

def projected(ckpt: cached.Checkpoint, method: str, n: int) -> explore.Projection:
    """The test set's codes in the plane; a spinner for the projections that take a while."""
    if method == "PCA":
        return cached.projection(ckpt, method)
    with st.spinner(f"Computing the {method} projection of {n} codes (cached afterwards)..."):
        return cached.projection(ckpt, method)


def map_view(page: common.ExplorePage, color_by: str, method: str, show_grid: bool, show_contours: bool) -> dict:
    """Send the map's payloads (once per checkpoint, projection and colouring: an unchanged
    one is not re-sent) and return the small view that names them."""
    proj = projected(page.checkpoint, method, page.enc.n)
    samples = cached.map_samples(page.checkpoint, MANIFOLD_N, MANIFOLD_SPAN)
    points = cached.map_points(page.checkpoint, method, color_by, tuple(charts.CATEGORY_COLORS))
    latent_map.payload(samples, key="latent_map_samples")
    latent_map.payload(points, key="latent_map_points")
    linear_view = page.enc.latent_dim <= 2 or method == "PCA"  # the cursor is a point of the plane
    return {"samples": inpage.payload_id(samples), "points": inpage.payload_id(points),
            "selected": common.selected_index(page.enc.n), "view_key": f"{page.summary.name}|{proj.method}",
            "axes": list(proj.axis_titles), "decode": bool(linear_view), "contours": bool(show_contours),
            "manifold": bool(show_grid)}


def map_chart(view: dict, color_by: str, method: str, d: int) -> None:
    """The map, clickable, and what its axes and colours mean."""
    latent_map.latent_map(view, key=CHART_KEY, on_select=_on_select)
    st.caption(("Axes: latent coordinates z1, z2. " if d <= 2 else f"Axes: {method} of the {d}-D codes. ")
               + ("Colour: " + (f"{color_by} (nats per sample, higher is better)."
                                if color_by in ("ELBO", "recon") else
                                "KL of q(z|x) to the prior, nats per sample (lower costs less)."
                                if color_by == "KL" else f"{color_by}."))
               + (" Under the cursor: the decoder's mean f(z)" + (" on the plane of the first two principal "
                                                                  "components through the mean of the codes."
                                                                  if d > 2 else ".")
                  if view["decode"] else " Decoding at the cursor needs d = 2 or the PCA view (a plane of codes)."))


def _on_select() -> None:
    i = latent_map.selected_index(CHART_KEY)
    if i is not None:
        state.set("sample", i)


# -- the live map of a run that trains ------------------------------------------------------------

@st.fragment(run_every=2.0)
def live_map(run_dir: str) -> None:
    """While a run trains: its newest snapshot of the test codes (trainer/snapshots.py), redrawn
    as new ones are saved, with the epoch player over those so far. No hover reconstruction and
    no decoding at the cursor: the weights change every epoch."""
    saved = snapshots.read(run_dir)
    st.subheader("The latent space as it forms")
    if saved is None:
        st.caption("The map of the test codes appears here after the trainer's first snapshot.")
        return
    epochs, mu = saved
    try:
        cfg = load_config(run_dir)
        classes = read_data_info(run_dir).get("class_names", [])  # the label's category names (data.json)
    except Exception:  # the folder is being written: the next refresh draws it
        return
    inputs, labels, label_names = cached.live_inputs(cfg.data, cfg.train.seed, mu.shape[1])
    proj = explore.project(mu[-1], "PCA")  # the newest codes' own plane; every frame on it
    frames = inpage.project_snapshots(mu, proj)
    values = labels[:, 0] if labels is not None and labels.shape[1] else None
    name = label_names[0] if values is not None else "none"
    points = inpage.points_payload(proj.xy, values, values is not None and explore.is_discrete(values), name,
                                   list(charts.CATEGORY_COLORS),
                                   explore.category_names(name, class_names=classes, label_names=label_names),
                                   (epochs, frames),
                                   int(epochs[-1]))
    latent_map.payload(inputs, key="latent_map_live_samples")
    latent_map.payload(points, key="latent_map_live_points")
    view = {"samples": inpage.payload_id(inputs), "points": inpage.payload_id(points), "selected": None,
            "view_key": f"{run_dir}|live", "axes": list(proj.axis_titles), "decode": False, "contours": False,
            "manifold": False, "live": True}
    latent_map.latent_map(view, key=LIVE_KEY, on_select=lambda: None)
    d = mu.shape[2]
    st.caption(f"Posterior means of the first {mu.shape[1]} test samples after epoch {int(epochs[-1])}"
               + (f", on the first two principal components of the {d}-D codes" if d > 2 else "")
               + f"; {len(epochs)} snapshots so far. Press play to replay them.")


# -- the selected sample -------------------------------------------------------------------------

def selected_sample(page: common.ExplorePage) -> None:
    """Its input and reconstruction, its ELBO terms and its labels."""
    enc = page.enc
    st.subheader("Selected sample")
    i = common.sample_input(enc.n)
    recon = cached.reconstructions(page.checkpoint)
    common.show_sample(enc, i, recon[i])
    m1, m2, m3 = st.columns(3)
    m1.metric("recon", f"{enc.recon[i]:.2f}", help="E_q[log p(x|z)], one sample of z, nats")
    m2.metric("-KL", f"{-enc.kl[i]:.2f}", help="-KL(q(z|x) || p(z)), nats")
    m3.metric("ELBO", f"{enc.elbo[i]:.2f}", help="recon - KL, nats per sample, higher is better")
    st.caption("ELBO = recon - KL for this sample, nats (one Monte Carlo draw of z). "
               "The ELBO breakdown page adds log p(x) and the gap.")
    if enc.labels is not None:
        st.caption(", ".join(f"{n} = {(explore.category_names(n, enc) or {}).get(float(v), f'{v:g}')}"
                             for n, v in zip(enc.label_names, enc.labels[i])))  # "target = class_1"
    st.page_link("views/elbo.py", label="ELBO breakdown of this sample", icon=":material/stacked_bar_chart:")


if __name__ == "__main__":
    main()
