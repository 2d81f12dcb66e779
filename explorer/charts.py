"""Figures: plain functions from arrays to plotly figures (no streamlit, no torch).

Every ELBO number is per sample, in nats, with the sign of a log-likelihood: higher is
better. Each term keeps one colour in every figure (TERM_COLORS), so that "recon" is the
same green in the training curves, the histograms and the Fig 1.4 bars.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

NATS = "nats per sample (higher is better)"
TERM_COLORS = {
    "elbo": "#1f77b4",  # blue
    "recon": "#2ca02c",  # green
    "kl": "#d62728",  # red (drawn as -KL)
    "log_px": "#9467bd",  # purple
    "gap": "#ff7f0e",  # orange
    "prior": "#8c564b",  # brown: log p(z)
}
TERM_LABELS = {
    "elbo": "ELBO",
    "recon": "recon  E_q[log p(x|z)]",
    "kl": "-KL(q(z|x) || p(z))",
    "log_px": "log p(x) (importance sampled)",
    "gap": "gap = log p(x) - ELBO",
}
# Categorical colours for labels (Plotly's qualitative palette, then its light variant).
CATEGORY_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692",
                   "#B6E880", "#FF97FF", "#FECB52", "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728",
                   "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF"]
INACTIVE_COLOR = "#b0b0b0"
LERP_SLERP_DASH = {"lerp": "solid", "slerp": "dot"}


def _layout(fig: go.Figure, title: str, height: int = 380, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0), **kw)
    return fig


# -- training curves ---------------------------------------------------------------------------

def metrics_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """metrics.jsonl rows -> one float array per key (NaN where a row lacks the key)."""
    keys = ["epoch"] + [f"{s}_{t}" for s in ("train", "test") for t in ("elbo", "recon", "kl")]
    out = {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        out[k] = np.array([v if isinstance(v, (int, float)) else np.nan for v in vals], dtype=float)
    return out


def training_curves(m: dict[str, np.ndarray], title: str = "Training curves") -> go.Figure:
    """ELBO, recon and -KL per epoch; test solid, train dashed. m: metrics_arrays(...)."""
    fig = go.Figure()
    for term in ("elbo", "recon", "kl"):
        sign = -1.0 if term == "kl" else 1.0
        for split, dash in (("test", "solid"), ("train", "dash")):
            key = f"{split}_{term}"
            if key not in m:
                continue
            fig.add_trace(go.Scatter(x=m["epoch"], y=sign * m[key], mode="lines",
                                     name=f"{TERM_LABELS[term].split('  ')[0]} ({split})",
                                     legendgroup=term, line=dict(color=TERM_COLORS[term], dash=dash)))
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title=NATS)
    return _layout(fig, title)


def compare_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], term: str = "elbo",
                   split: str = "test") -> go.Figure:
    """One line per run: curves[name] = (epochs, values of `split`_`term`)."""
    fig = go.Figure()
    sign = -1.0 if term == "kl" else 1.0
    for i, (name, (epoch, values)) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=epoch, y=sign * np.asarray(values, dtype=float), mode="lines", name=name,
                                 line=dict(color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)])))
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title=NATS)
    label = TERM_LABELS[term].split("  ")[0]
    return _layout(fig, f"{split} {label} per epoch, by run")


# -- the latent map ----------------------------------------------------------------------------

def latent_map(xy: np.ndarray, color: np.ndarray | None, color_name: str, discrete: bool,
               axis_titles: tuple[str, str] = ("z1", "z2"), selected: int | None = None,
               path: np.ndarray | None = None, path_name: str = "path",
               endpoints: dict[str, np.ndarray] | None = None, current: np.ndarray | None = None,
               steps: tuple[np.ndarray, np.ndarray] | None = None,
               background: tuple[np.ndarray, float] | None = None,
               contours: tuple[np.ndarray, np.ndarray] | None = None,
               category_names: dict[float, str] | None = None, height: int = 560) -> go.Figure:
    """The test set's posterior means as a WebGL scatter.

    xy (N, 2); color (N,) label or value per point (None: one colour); each point carries its
    test index as customdata, so a selection event names the sample. Optional overlays: the
    selected point, an interpolation path (M, 2) with endpoints {"A": (2,), "B": (2,)}, points
    along it (steps: (K, 2) places and their (K,) t) and the current point, a decoded-manifold
    image (uint8 array, span) under the points, and prior density contours (axis (n,),
    log-density (n, n)). Drawn bottom to top in that order: picture, contours, points, path,
    steps, endpoints, current point, selection ring."""
    xy = np.asarray(xy, dtype=float)
    fig = go.Figure()
    if background is not None:
        _add_manifold_picture(fig, *background)
    if contours is not None:
        _add_prior_contours(fig, *contours)
    if color is None:
        _add_points_one_colour(fig, xy)
    elif discrete:
        _add_points_by_category(fig, xy, np.asarray(color, dtype=float), color_name, category_names or {})
    else:
        _add_points_by_value(fig, xy, np.asarray(color, dtype=float), color_name)
    if path is not None:
        _add_path(fig, np.asarray(path, dtype=float), path_name)
    if steps is not None:
        _add_steps(fig, np.asarray(steps[0], dtype=float), np.asarray(steps[1], dtype=float))
    for name, point in (endpoints or {}).items():
        _add_endpoint(fig, name, point)
    if current is not None:
        _add_current(fig, current)
    if selected is not None and 0 <= selected < len(xy):
        _add_selection_ring(fig, xy[selected], selected)
    return _latent_map_layout(fig, axis_titles, height)


POINT_HOVER = "sample %{customdata}<br>%{x:.2f}, %{y:.2f}"  # customdata: the test index


def _add_manifold_picture(fig: go.Figure, image: np.ndarray, span: float) -> None:
    """The decoded grid as a picture under the points, covering [-span, span]^2."""
    fig.add_layout_image(dict(source=_data_uri(image), xref="x", yref="y", x=-span, y=span,
                              sizex=2 * span, sizey=2 * span, sizing="stretch", layer="below",
                              opacity=0.85))


def _add_prior_contours(fig: go.Figure, axis: np.ndarray, logp: np.ndarray) -> None:
    fig.add_trace(go.Contour(x=axis, y=axis, z=logp, showscale=False, name="log p(z)",
                             contours=dict(coloring="lines", showlabels=True,
                                           labelfont=dict(size=9, color=TERM_COLORS["prior"])),
                             line=dict(color=TERM_COLORS["prior"], width=1), ncontours=8,
                             colorscale=[[0, TERM_COLORS["prior"]], [1, TERM_COLORS["prior"]]],
                             hoverinfo="skip", showlegend=True))


def _add_points_one_colour(fig: go.Figure, xy: np.ndarray) -> None:
    fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=np.arange(len(xy)),
                               name="test samples", marker=dict(size=6, color=CATEGORY_COLORS[0], opacity=0.8),
                               hovertemplate=POINT_HOVER + "<extra></extra>"))


def _add_points_by_category(fig: go.Figure, xy: np.ndarray, color: np.ndarray, color_name: str,
                            category_names: dict[float, str]) -> None:
    """One trace per category, so the legend names each (and can hide it)."""
    idx = np.arange(len(xy))
    for i, value in enumerate(np.unique(color)):
        m = color == value
        label = category_names.get(float(value), f"{color_name} {value:g}")  # "class_1", else "digit 3"
        fig.add_trace(go.Scattergl(
            x=xy[m, 0], y=xy[m, 1], mode="markers", customdata=idx[m], name=label,
            marker=dict(size=6, color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)], opacity=0.85),
            hovertemplate=POINT_HOVER + f"<br>{color_name}: {label}<extra></extra>"))
    fig.update_layout(legend_title_text=color_name)  # the label's name, e.g. "target"


def _add_points_by_value(fig: go.Figure, xy: np.ndarray, color: np.ndarray, color_name: str) -> None:
    fig.add_trace(go.Scattergl(
        x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=np.arange(len(xy)), name=color_name,
        marker=dict(size=6, color=color, colorscale="Viridis", opacity=0.85,
                    colorbar=dict(title=dict(text=color_name, side="right"), thickness=12)),
        hovertemplate=POINT_HOVER + f"<br>{color_name} %{{marker.color:.2f}}<extra></extra>"))


def _add_path(fig: go.Figure, path: np.ndarray, path_name: str) -> None:
    fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines", name=path_name,
                             line=dict(color="black", width=3), hoverinfo="skip"))


def _add_steps(fig: go.Figure, places: np.ndarray, ts: np.ndarray) -> None:
    """Points along the path, labelled with their t (no customdata: not a test sample)."""
    fig.add_trace(go.Scatter(x=places[:, 0], y=places[:, 1], mode="markers", name="strip steps",
                             text=[f"t = {v:.2f}" for v in ts], hovertemplate="%{text}<extra></extra>",
                             marker=dict(size=7, color="white", line=dict(color="black", width=1.5))))


def _add_endpoint(fig: go.Figure, name: str, point: np.ndarray) -> None:
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers+text", text=[name],
                             textposition="top center", textfont=dict(size=16, color="black"),
                             name=f"endpoint {name}", showlegend=False, hoverinfo="skip",
                             marker=dict(size=14, color="white", line=dict(color="black", width=2))))


def _add_current(fig: go.Figure, point: np.ndarray) -> None:
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers", name="z(t)",
                             marker=dict(size=18, symbol="star", color="gold", line=dict(color="black", width=1)),
                             hoverinfo="skip"))


def _add_selection_ring(fig: go.Figure, point: np.ndarray, index: int) -> None:
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers",
                             name=f"selected: sample {index}", hoverinfo="skip",
                             marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color="black", width=3))))


def _latent_map_layout(fig: go.Figure, axis_titles: tuple[str, str], height: int) -> go.Figure:
    """Equal scales on both axes, clicks select points, a drag pans."""
    fig.update_xaxes(title=axis_titles[0], zeroline=True)
    fig.update_yaxes(title=axis_titles[1], zeroline=True, scaleanchor="x", scaleratio=1)
    _layout(fig, "", height=height, clickmode="event+select", dragmode="pan")
    fig.update_layout(margin=dict(l=10, r=10, t=30, b=10))
    return fig


def _data_uri(image: np.ndarray) -> str:
    """A uint8 image (H, W) or (H, W, 3) as a PNG data URI, for a layout image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- the ELBO, term by term --------------------------------------------------------------------

def elbo_waterfall(recon: float, kl: float, log_px: float | None = None,
                   title: str = "This sample's ELBO, term by term") -> go.Figure:
    """Fig 1.4 with real numbers: recon, then -KL takes it down to the ELBO; the gap
    log p(x) - ELBO (the KL to the true posterior) takes it up to log p(x)."""
    elbo = recon - kl
    names = [TERM_LABELS["recon"], TERM_LABELS["kl"], "= ELBO"]
    bases, heights, terms = [0.0, recon, 0.0], [recon, -kl, elbo], ["recon", "kl", "elbo"]
    if log_px is not None:
        gap = log_px - elbo
        names += [TERM_LABELS["gap"], "= log p(x)"]
        bases += [elbo, 0.0]
        heights += [gap, log_px]
        terms += ["gap", "log_px"]
    fig = go.Figure(go.Bar(
        x=names, y=heights, base=bases, marker_color=[TERM_COLORS[t] for t in terms],
        text=[f"{h:+.2f}" if i in (1, 3) else f"{h:.2f}" for i, h in enumerate(heights)],
        textposition="outside", customdata=terms, hovertemplate="%{x}: %{text} nats<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_yaxes(title=NATS)
    return _layout(fig, title, showlegend=False)


def term_histograms(values: dict[str, np.ndarray], marks: dict[str, float] | None = None,
                    title: str = "Per-sample terms over the test set") -> go.Figure:
    """One histogram per term: values["elbo"|"recon"|"kl"] (N,); kl is drawn as -KL. marks:
    a sample's values, drawn as vertical lines."""
    terms = [t for t in ("elbo", "recon", "kl") if t in values]
    fig = make_subplots(rows=1, cols=len(terms), subplot_titles=[TERM_LABELS[t].split("  ")[0] for t in terms])
    for col, term in enumerate(terms, start=1):
        sign = -1.0 if term == "kl" else 1.0
        fig.add_trace(go.Histogram(x=sign * np.asarray(values[term], dtype=float), nbinsx=40,
                                   marker_color=TERM_COLORS[term], name=TERM_LABELS[term], showlegend=False),
                      row=1, col=col)
        if marks and term in marks:
            fig.add_vline(x=sign * marks[term], line=dict(color="black", dash="dash"), row=1, col=col)
        fig.update_xaxes(title_text=NATS if col == 2 or len(terms) == 1 else "nats per sample", row=1, col=col)
    fig.update_yaxes(title_text="test samples", row=1, col=1)
    return _layout(fig, title, height=320)


def kl_per_dim_bars(kl_per_dim: np.ndarray, active: np.ndarray) -> go.Figure:
    """Mean KL per latent dimension (d,), active dimensions in the KL colour, inactive (posterior
    collapse: KL near 0, the code ignores x) in grey."""
    kl_per_dim, active = np.asarray(kl_per_dim, dtype=float), np.asarray(active, dtype=bool)
    names = [f"z{j + 1}" for j in range(len(kl_per_dim))]
    fig = go.Figure(go.Bar(x=names, y=kl_per_dim, marker_color=[TERM_COLORS["kl"] if a else INACTIVE_COLOR
                                                                for a in active],
                           customdata=np.where(active, "active", "inactive"),
                           hovertemplate="%{x}: KL %{y:.3f} nats (%{customdata})<extra></extra>"))
    fig.update_xaxes(title="latent dimension")
    fig.update_yaxes(title="KL, nats per sample (lower costs less)")
    return _layout(fig, f"KL per latent dimension: {int(active.sum())} of {len(active)} active", height=320)


def path_profile(t: np.ndarray, curves: dict[str, dict[str, np.ndarray]], current_t: float | None = None,
                 typical: tuple[float, float] | None = None, height: int = 380) -> go.Figure:
    """Along an interpolation path: log p(z) of the prior (top) and the ELBO of the decoded
    sample (bottom). curves[method] = {"log_prior": (T,), "decoded_elbo": (T,)}; typical:
    the (low, high) range of log p(z) of typical prior samples, shaded."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=["prior log-density log p(z), nats", "ELBO of the decoded sample, " + NATS])
    if typical is not None:
        fig.add_hrect(y0=typical[0], y1=typical[1], fillcolor=TERM_COLORS["prior"], opacity=0.12, line_width=0,
                      row=1, col=1)
    for method, c in curves.items():
        dash = LERP_SLERP_DASH.get(method, "solid")
        fig.add_trace(go.Scatter(x=t, y=c["log_prior"], mode="lines", name=f"{method}: log p(z)",
                                 line=dict(color=TERM_COLORS["prior"], dash=dash)), row=1, col=1)
        fig.add_trace(go.Scatter(x=t, y=c["decoded_elbo"], mode="lines", name=f"{method}: ELBO",
                                 line=dict(color=TERM_COLORS["elbo"], dash=dash)), row=2, col=1)
    if current_t is not None:
        fig.add_vline(x=current_t, line=dict(color="gold", width=2), name=CURRENT_T)
    fig.update_xaxes(title_text="t", row=2, col=1)
    return _layout(fig, "Along the path", height=height)


CURRENT_T = "current t"


def mark_t(fig: go.Figure, t: float) -> go.Figure:
    """Move path_profile's current-t line(s) to t, in place: far cheaper than building the
    figure again (the Interpolate page does this on every slider move)."""
    fig.update_shapes(x0=t, x1=t, selector=dict(name=CURRENT_T))
    return fig


# -- data that are not images -----------------------------------------------------------------

def data_scatter(data: np.ndarray, points: dict[str, np.ndarray], title: str,
                 feature_names: list[str] | None = None) -> go.Figure:
    """2-D data (N, 2) in grey with named point sets {name: (M, 2)} on top; the axes named by
    feature_names (2 names; else x1, x2)."""
    data = np.asarray(data, dtype=float).reshape(len(data), -1)
    fig = go.Figure(go.Scattergl(x=data[:, 0], y=data[:, 1], mode="markers", name="test data",
                                 marker=dict(size=4, color=INACTIVE_COLOR)))
    for i, (name, p) in enumerate(points.items()):
        p = np.asarray(p, dtype=float).reshape(len(p), -1)
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", name=name,
                                 marker=dict(size=9, color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)])))
    names = list(feature_names) if feature_names is not None and len(feature_names) == 2 else ["x1", "x2"]
    fig.update_xaxes(title=names[0])
    fig.update_yaxes(title=names[1], scaleanchor="x", scaleratio=1)
    return _layout(fig, title)


BAR_NAME_CHARS = 18  # a feature name longer than this is shortened on vector_bars' axis


def vector_bars(vectors: dict[str, np.ndarray], title: str, feature_names: list[str] | None = None,
                ranges: list[list[float]] | None = None) -> go.Figure:
    """Vectors (D,) side by side per coordinate, e.g. an input and its reconstruction, as
    horizontal bars: one row per coordinate, top to bottom in the data's order, named by
    feature_names (D names; else x1..xD; a long name is shortened on the axis, whole in the
    hover), so names read across even in a narrow column. ranges: one [lo, hi] per
    coordinate (explore.bar_scales, for features in units too far apart for one axis): the
    bars then show (v - lo) / (hi - lo), where in its range each value is; the hover says the value."""
    d = len(np.ravel(next(iter(vectors.values())))) if vectors else 0
    names = list(feature_names) if feature_names is not None and len(feature_names) == d else [f"x{j + 1}" for j in range(d)]
    scaled = ranges is not None and len(ranges) == d
    lo, hi = np.asarray(ranges, dtype=float).T if scaled else (0.0, 1.0)
    fig = go.Figure()
    for i, (name, v) in enumerate(vectors.items()):
        v = np.asarray(v, dtype=float).ravel()
        fig.add_trace(go.Bar(y=names, x=(v - lo) / (hi - lo) if scaled else v, customdata=v, name=name,
                             orientation="h", marker_color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)],
                             hovertemplate=f"{name}<br>%{{y}} = %{{customdata:.4g}}<extra></extra>"))
    fig.update_layout(barmode="group", bargap=0.25)
    # names as they are (a column named "1" stays a name), the first on top; shortened on the axis
    fig.update_yaxes(type="category", autorange="reversed", tickmode="array", tickvals=names,
                     ticktext=[n if len(n) <= BAR_NAME_CHARS else n[:BAR_NAME_CHARS - 1] + "…" for n in names])
    fig.update_xaxes(title="place in range" if scaled else "value (data units)")  # in the test set: 0 its min, 1 its max
    rows_px = (14 + 8 * len(vectors)) * d  # a row per coordinate, a bar per vector in it
    _layout(fig, title, height=min(900, 150 + rows_px))
    # the legend between the title and the bars (room for two rows in a narrow column)
    fig.update_layout(margin=dict(t=92), legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
    return fig


def feature_heatmap(values: np.ndarray, feature_names: list[str], row_names: list[str], title: str,
                    row_title: str = "") -> go.Figure:
    """Vectors (R, D) as a heatmap: one row per vector, one column per named feature, the
    value (data units) as colour and in the hover."""
    values = np.asarray(values, dtype=float).reshape(len(row_names), -1)
    fig = go.Figure(go.Heatmap(z=values, x=list(feature_names), y=list(row_names), colorscale="RdBu_r",
                               zmid=0 if values.size and values.min() < 0 < values.max() else None,
                               colorbar=dict(title="value"),
                               hovertemplate="%{y}<br>%{x} = %{z:.4g}<extra></extra>"))
    fig.update_yaxes(title=row_title, autorange="reversed", type="category")
    fig.update_xaxes(title="feature", type="category")
    return _layout(fig, title, height=max(260, min(900, 60 + 18 * len(row_names))))
