"""Interpolate: walk from the code of test sample A to that of sample B and decode each step.

The slider t, the decoded image and the small map with z(t) are one component drawn in the
page (explorer/components/interpolation): the path's decoded steps are sent once, so a drag
needs no server; the released t comes back and the numbers, the profile and the URL follow."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import charts, state
from explorer.components.interpolation import interpolation
from explorer.services import cached, explore, path_payload, pictures
from explorer.views import common

COMPONENT_KEY = "interp_component"
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
    # The slider, the decoded image and the small map are drawn in the page from one message:
    # a drag sends nothing. Its release (the new t) reruns only this fragment: the numbers,
    # the profile chart and the URL.
    at_t(page, frames, curves, a, b, method)
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
                 help="Click a code on the small map to make it endpoint A or B; the choice then "
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


def _on_pick() -> None:
    """A click on a code of the component's map: it becomes endpoint A or B (click_sets)."""
    i = getattr(st.session_state.get(COMPONENT_KEY), "picked", None)
    if i is None:
        return
    which = st.session_state.get("click_sets", "A")
    _set_endpoint(which, int(i))
    st.session_state["click_sets"] = "B" if which == "A" else "A"  # the next click sets the other end


def _on_t_release() -> None:
    """The component's t after a release (or a key press): kept, and so in the URL."""
    t = getattr(st.session_state.get(COMPONENT_KEY), "t", None)
    if t is not None:
        state.set("t", round(min(1.0, max(0.0, float(t))), 2))


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
        # A number box, not a second slider: the page's one slider is t.
        strip_n = int(st.number_input("Images in the strip", 3, 15, 8, step=1, key="strip_n"))
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


# -- the path in the page: slider, decoded image, map ---------------------------------------------

def projected(ckpt: cached.Checkpoint, method: str, n: int) -> explore.Projection:
    """The test set's codes in the plane (the latent map's projection, ?proj=)."""
    if method == "PCA":
        return cached.projection(ckpt, method)
    with st.spinner(f"Computing the {method} projection of {n} codes (cached afterwards)..."):
        return cached.projection(ckpt, method)


def path_message(page: common.ExplorePage, frames: explore.PathFrames, a: int, b: int, method: str,
                 t: float) -> tuple[bytes, explore.Projection]:
    """The component's message for this path (path_payload.payload), and the projection its map uses.

    Built once per path and session and then sent unchanged: Streamlit sends a message it has
    sent before as a reference only, and the page keeps its own t while the path stays. The
    message says where the slider starts, so it is built anew (with the kept t) when the
    component was not on the page in the previous run (another page was shown), since then
    the page starts from the message's t."""
    enc = page.enc
    proj = projected(page.checkpoint, state.get("proj", "PCA"), enc.n)
    color_by = enc.label_names[0] if enc.labels is not None else ""
    key = (page.checkpoint, a, b, method, proj.method, color_by)
    kept = st.session_state.get("_interp_message")
    mounted = COMPONENT_KEY in st.session_state
    if kept is None or kept[0] != key or (not mounted and kept[1] != t):
        values, discrete = explore.color_values(enc, color_by) if color_by else (None, False)
        message = path_payload.payload(frames, enc.is_image, proj.xy, proj.transform(frames.z), a, b, t, method,
                                       proj.axis_titles, values, discrete, color_by,
                                       [] if enc.is_image else explore.feature_names(enc),
                                       None if enc.is_image else enc.x)
        kept = (key, t, message)
        st.session_state["_interp_message"] = kept
    return kept[2], proj


@st.fragment
def at_t(page: common.ExplorePage, frames: explore.PathFrames, curves: dict, a: int, b: int, method: str) -> None:
    """The component (slider t, decoded image, map) and what depends on the released t: its
    log p(z) and ELBO, the profile along the path with t marked, the URL. A release reruns
    only this; a click on the map (new endpoints) reruns the page."""
    enc = page.enc
    t = float(state.get("t", 0.5))
    state.set("t", round(t, 2))
    message, proj = path_message(page, frames, a, b, method, t)
    left, right = st.columns([3, 2])
    with left:
        result = interpolation(message, key=COMPONENT_KEY, on_t_change=_on_t_release, on_picked_change=_on_pick)
        st.caption("Drag t (or use the arrow keys on it): the decoded image and the gold z(t) on the map follow "
                   "in the page, from all the path's decoded steps sent once; the numbers, the chart and the "
                   "link follow on release."
                   + (f" The map is drawn through the same {proj.method} projection as the latent map."
                      if proj.method != "identity" else "")
                   + (" t-SNE/UMAP cannot place new points exactly: the path is placed near its nearest codes."
                      if proj.method in ("t-SNE", "UMAP") else ""))
    if result.picked is not None:  # _on_pick changed an endpoint: the path, the strip and the inputs change
        st.rerun(scope="app")
    t = float(state.get("t", t))
    k = int(round(t * (len(frames.t) - 1)))
    state.write_to_url()  # a rerun of this fragment alone does not pass app.py, which writes the URL
    with right:
        st.subheader(f"At t = {frames.t[k]:.2f}")
        m1, m2 = st.columns(2)
        m1.metric("log p(z(t))", f"{frames.log_prior[k]:.2f}", help="prior log-density at z(t), nats")
        m2.metric("ELBO of f(z(t))", f"{frames.decoded_elbo[k]:.2f}",
                  help="the ELBO the model gives its own decoded sample, nats per sample, higher is better")
        path_profile(curves, (page.checkpoint, a, b, method), enc.latent_dim, float(frames.t[k]))
    if not enc.is_image and frames.images.ndim == 2 and frames.images.shape[-1] == 2:
        common.chart(charts.data_scatter(enc.x, {"decoded path": frames.images,
                                                 f"f(z(t)), t = {frames.t[k]:.2f}": frames.images[k:k + 1]},
                                         "The path decoded, in data space", explore.feature_names(enc)),
                     key="interp_data")


# -- the path as a strip -------------------------------------------------------------------------

def strip(enc: explore.Encoded, frames: explore.PathFrames, strip_n: int) -> None:
    """strip_n decoded steps of the path, A to B."""
    idx = strip_steps(len(frames.t), strip_n)
    st.subheader(f"The path in {strip_n} steps")
    if enc.is_image:
        st.image(pictures.png(frames.images[idx], ncols=strip_n, size=90),
                 caption="t = " + ", ".join(f"{frames.t[j]:.2f}" for j in idx),
                 alt=f"the path decoded in {strip_n} steps from A to B")
    else:
        import pandas as pd

        st.dataframe(pd.DataFrame({f"t={frames.t[j]:.2f}": frames.images[j].ravel() for j in idx},
                                  index=pd.Index(explore.feature_names(enc), name="feature")), key="interp_strip")


def strip_steps(n_frames: int, strip_n: int) -> np.ndarray:
    """The frames the strip shows: strip_n of n_frames, evenly spaced, both ends included."""
    return np.linspace(0, n_frames - 1, strip_n).round().astype(int)


def path_profile(curves: dict, key: tuple, latent_dim: int, t: float) -> None:
    """log p(z) and the decoded sample's ELBO along both paths, the current t marked."""
    common.chart(_profile_figure(curves, key, latent_dim, t), key="path_profile",
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
