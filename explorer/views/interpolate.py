"""Interpolate: walk from the code of test sample A to that of sample B and decode each step."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from explorer import charts, state
from explorer.services import cached, explore, pictures
from explorer.views import common
from explorer.views.latent_map import projected

CHART_KEY = "interp_map_chart"
PROFILE_AFTER_S = 0.06  # pause between the decoded image and the profile chart on a slider move
OTHER = {"lerp": "slerp", "slerp": "lerp"}  # the path drawn beside the chosen one in the profile
INTRO = ("Pick two test samples A and B. Their codes mu(A) and mu(B) are joined by a path z(t), "
         "t from 0 to 1, and each point of the path is decoded to f(z(t)). lerp is the straight "
         "line; slerp follows the sphere, keeping |z| between |mu(A)| and |mu(B)|, where the prior "
         "N(0, I) puts its mass (its typical set).")


def main() -> None:
    page = common.explore_page("Interpolate")
    if page is None:
        return
    st.caption(INTRO)
    enc = page.enc
    a, b = kept_endpoints(enc)
    endpoint_inputs(enc.n)
    method, strip_n = path_controls()
    frames, curves = decoded_paths(page.checkpoint, a, b, method)
    profile_key = (page.checkpoint, a, b, method)
    left, right = st.columns([3, 2])
    with right:
        # Everything that depends on t, in a fragment: a slider release reruns only this
        # (about 10 ms of work), not the sidebar, the map and the strip.
        at_t(frames, curves, profile_key, enc.latent_dim, enc.is_image, enc.x if not enc.is_image else None)
    with left:
        path_map(page, frames, a, b, method, strip_n)
    strip(enc, frames, strip_n)


# -- choosing the path ---------------------------------------------------------------------------

def kept_endpoints(enc: explore.Encoded) -> tuple[int, int]:
    """The endpoints A and B, test-set indices kept in the URL as ?a=&b= (defaults: see
    default_endpoints), handed to their number inputs."""
    n = enc.n
    da, db = default_endpoints(enc)
    a = state.get("a", da)
    b = state.get("b", db)
    a, b = (a if 0 <= a < n else da), (b if 0 <= b < n else db)
    state.set("a", a)
    state.set("b", b)
    for which, value in (("a", a), ("b", b)):
        if st.session_state.get(f"endpoint_{which}") != value:
            st.session_state[f"endpoint_{which}"] = value
    return a, b


def endpoint_inputs(n: int) -> None:
    """Number inputs for A and B, what a map click sets, and a random pair."""
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    c1.number_input("Endpoint A (test sample)", 0, n - 1, step=1, key="endpoint_a",
                    on_change=lambda: state.set("a", int(st.session_state["endpoint_a"])))
    c2.number_input("Endpoint B (test sample)", 0, n - 1, step=1, key="endpoint_b",
                    on_change=lambda: state.set("b", int(st.session_state["endpoint_b"])))
    with c3:
        st.radio("A click on the map sets", ["A", "B"], key="click_sets", horizontal=True,
                 help="Click a point on the map below to make it endpoint A or B; the choice then "
                      "switches to the other endpoint.")
    with c4:
        st.button("Random endpoints", key="random_endpoints", on_click=_on_random, args=(n,),
                  icon=":material/casino:")


def default_endpoints(enc: explore.Encoded) -> tuple[int, int]:
    """Sample 0 and the first sample with another label (or sample 1)."""
    a = 0
    if enc.labels is not None:
        other = np.nonzero(enc.labels[:, 0] != enc.labels[0, 0])[0]
        if len(other):
            return a, int(other[0])
    return a, min(1, enc.n - 1)


def _set_endpoint(which: str, i: int) -> None:
    state.set(which.lower(), int(i))
    st.session_state[f"endpoint_{which.lower()}"] = int(i)


def _on_map_click() -> None:
    i = common.point_from_event(CHART_KEY)
    if i is None:
        return
    which = st.session_state.get("click_sets", "A")
    _set_endpoint(which, i)
    st.session_state["click_sets"] = "B" if which == "A" else "A"  # the next click sets the other end


def _on_random(n: int) -> None:
    rng = np.random.default_rng()
    a, b = rng.choice(n, size=2, replace=False)
    _set_endpoint("A", a)
    _set_endpoint("B", b)


def path_controls() -> tuple[str, int]:
    """(lerp or slerp, kept in the URL as ?path=; how many images the strip shows)."""
    c1, c2 = st.columns([2, 4])
    with c1:
        state.seed_widget("interp_path", "path", "lerp")
        method = st.radio("Path", ["lerp", "slerp"], key="interp_path", horizontal=True,
                          help="lerp: (1 - t) a + t b.  slerp: along the great circle, norm interpolated.")
        state.set("path", method)
    with c2:
        strip_n = st.slider("Images in the strip", 3, 15, 8, key="strip_n")
    return method, strip_n


def decoded_paths(ckpt: cached.Checkpoint, a: int, b: int, method: str) -> tuple[explore.PathFrames, dict]:
    """The chosen path decoded, and the profile chart's curves of both paths, the chosen one
    first: {path: {"log_prior": (T,), "decoded_elbo": (T,)}}."""
    with st.spinner("Decoding the path..."):
        frames = cached.path_frames(ckpt, a, b, method)
        other = cached.path_frames(ckpt, a, b, OTHER[method])
    curves = {method: {"log_prior": frames.log_prior, "decoded_elbo": frames.decoded_elbo},
              OTHER[method]: {"log_prior": other.log_prior, "decoded_elbo": other.decoded_elbo}}
    return frames, curves


# -- the path on the map, and as a strip ---------------------------------------------------------

def path_map(page: common.ExplorePage, frames: explore.PathFrames, a: int, b: int, method: str,
             strip_n: int) -> None:
    """The test set's codes with the path, its endpoints and the strip's steps on them."""
    enc = page.enc
    proj = projected(page.checkpoint, state.get("proj", "PCA"), enc.n)
    values, discrete = explore.color_values(enc, enc.label_names[0]) if enc.labels is not None else (None, False)
    idx = strip_steps(len(frames.t), strip_n)
    fig = charts.latent_map(
        proj.xy, values, enc.label_names[0] if enc.labels is not None else "", discrete, proj.axis_titles,
        path=proj.transform(frames.z), path_name=f"path ({method})",
        endpoints={"A": proj.xy[a], "B": proj.xy[b]},
        steps=(proj.transform(frames.z[idx]), frames.t[idx]), height=480)
    st.plotly_chart(fig, key=CHART_KEY, on_select=_on_map_click, selection_mode="points",
                    config={"scrollZoom": True, "displaylogo": False})
    st.caption("The test set's codes with the path from A to B (black) and the strip's steps on it (dots)"
               + (f", drawn through the same {proj.method} projection as the latent map." if proj.method
                  not in ("identity",) else ".")
               + (" t-SNE/UMAP cannot place new points exactly: the path is placed near its nearest codes."
                  if proj.method in ("t-SNE", "UMAP") else "")
               + " The current t is the gold line of the chart beside the decoded image.")


def strip(enc: explore.Encoded, frames: explore.PathFrames, strip_n: int) -> None:
    """strip_n decoded steps of the path, A to B."""
    idx = strip_steps(len(frames.t), strip_n)
    st.subheader(f"The path in {strip_n} steps")
    if enc.is_image:
        st.image(pictures.png(frames.images[idx], ncols=strip_n, size=90),
                 caption="t = " + ", ".join(f"{frames.t[j]:.2f}" for j in idx))
    else:
        st.dataframe({f"t={frames.t[j]:.2f}": frames.images[j].ravel() for j in idx})


def strip_steps(n_frames: int, strip_n: int) -> np.ndarray:
    """The frames the strip shows: strip_n of n_frames, evenly spaced, both ends included."""
    return np.linspace(0, n_frames - 1, strip_n).round().astype(int)


# -- what depends on t: a fragment -------------------------------------------------------------

@st.fragment
def at_t(frames: explore.PathFrames, curves: dict, profile_key: tuple, latent_dim: int, is_image: bool,
         data: np.ndarray | None) -> None:
    """The slider t and what depends on it: the decoded image (drawn first), its log p(z) and
    ELBO, and the profile along the path with t marked. A slider release reruns only this."""
    state.seed_widget("interp_t", "t", 0.5)
    t = st.slider("t (position on the path, 0 = A, 1 = B)", 0.0, 1.0, step=0.01, key="interp_t")
    state.set("t", round(float(t), 2))
    k = int(round(t * (len(frames.t) - 1)))
    decoded_at(frames, k, is_image, data)
    state.write_to_url()  # a rerun of this fragment alone does not pass app.py, which writes the URL
    m1, m2 = st.columns(2)
    m1.metric("log p(z(t))", f"{frames.log_prior[k]:.2f}", help="prior log-density at z(t), nats")
    m2.metric("ELBO of f(z(t))", f"{frames.decoded_elbo[k]:.2f}",
              help="the ELBO the model gives its own decoded sample, nats per sample, higher is better")
    # The profile chart is drawn anew in the browser at every t (its figure changes, so does its
    # element): 50-100 ms of the page's main thread. Sent with the image, it is drawn in the same
    # frame and the new image waits for it; a short pause first lets the image be shown alone.
    time.sleep(PROFILE_AFTER_S)
    path_profile(curves, profile_key, latent_dim, float(frames.t[k]))


def decoded_at(frames: explore.PathFrames, k: int, is_image: bool, data: np.ndarray | None) -> None:
    """Frame k decoded: an image, a point over the 2-D data, or a vector's bars."""
    st.subheader(f"Decoded at t = {frames.t[k]:.2f}")
    if is_image:
        # Inline (a data: URL) rather than a media file: the browser shows it from the message
        # itself, without a second request to a server that is still busy with this rerun.
        st.image(pictures.png_data_url(frames.images[k:k + 1], size=300),
                 caption=f"f(z(t)), the decoder's mean image at t = {frames.t[k]:.2f}")
    elif frames.images.shape[-1] == 2 and frames.images.ndim == 2:
        st.plotly_chart(charts.data_scatter(data, {"decoded path": frames.images,
                                                   f"f(z(t)), t = {frames.t[k]:.2f}": frames.images[k:k + 1]},
                                            "The path decoded, in data space"), key="interp_data")
    else:
        st.plotly_chart(charts.vector_bars({f"f(z(t)), t = {frames.t[k]:.2f}": frames.images[k]},
                                           "Decoded vector at t"), key="interp_vector")


def path_profile(curves: dict, key: tuple, latent_dim: int, t: float) -> None:
    """log p(z) and the decoded sample's ELBO along both paths, the current t marked."""
    st.plotly_chart(_profile_figure(curves, key, latent_dim, t), key="path_profile",
                    config={"staticPlot": True})  # no hover layer to build: the values at t are above
    st.caption("Top: log N(z(t); 0, I), the prior's log-density along each path (nats); shaded: where the "
               f"log-density of most prior samples lies (mean +- 2 sd) for d = {latent_dim}. A straight line "
               "between two typical codes cuts towards the origin, where the density is higher than any "
               "typical sample's in high dimension (|z| much smaller than sqrt(d)); slerp keeps |z| in the "
               "typical range. Bottom: the ELBO the model assigns to its own decoded image, nats per sample, "
               "higher is better. Solid: lerp, dotted: slerp. Gold line: the current t.")


def _profile_figure(curves: dict, key: tuple, latent_dim: int, t: float):
    """The path profile for this path (built once per path and session, then only its
    current-t line moves: building it costs more than the rest of a slider move)."""
    kept = st.session_state.get("_interp_profile")
    if kept is None or kept[0] != key:
        t_axis = np.linspace(0.0, 1.0, len(next(iter(curves.values()))["log_prior"]))
        fig = charts.path_profile(t_axis, curves, current_t=t, typical=explore.typical_log_density(latent_dim),
                                  height=340)
        kept = (key, fig)
        st.session_state["_interp_profile"] = kept
    return charts.mark_t(kept[1], t)


if __name__ == "__main__":
    main()
