"""Figures of the "Inside the ELBO" page: plain functions from arrays to plotly figures (no
streamlit, no torch), in the colours of explorer/charts.py. Nats per sample, higher is
better; each figure's title names the equation it draws (vae-math.md's numbering)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.charts import CATEGORY_COLORS, NATS, TERM_COLORS, _layout

Q_COLOR = "#17becf"  # q(z|x): its draws and its ellipses
POSTERIOR_SCALE = "Viridis"


def _ellipse(mu: np.ndarray, sigma: np.ndarray, k: float, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0, 2 * np.pi, n)
    return mu[0] + k * sigma[0] * np.cos(a), mu[1] + k * sigma[1] * np.sin(a)


def _add_q_ellipses(fig: go.Figure, mu: np.ndarray, sigma: np.ndarray, **where) -> None:
    """q(z|x)'s 1- and 2-sigma ellipses (diagonal covariance) and its mean."""
    for k, dash in ((1, "solid"), (2, "dash")):
        ex, ey = _ellipse(mu, sigma, k)
        fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", name=f"q(z|x), {k} sigma",
                                 line=dict(color=Q_COLOR, width=2, dash=dash), hoverinfo="skip"), **where)
    fig.add_trace(go.Scatter(x=[mu[0]], y=[mu[1]], mode="markers", name="mu(x)",
                             marker=dict(symbol="x", size=11, color="black")), **where)


# -- 1. the reparameterization trick -------------------------------------------------------------

def reparam_cloud(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, axis_titles: tuple[str, str],
                  title: str, codes: np.ndarray | None = None, max_codes: int = 3000) -> go.Figure:
    """The M draws z_m = mu + sigma * eps_m (M, 2) on the latent map, with q(z|x)'s ellipses.

    codes (N, 2), optional: the latent map itself (the test set's posterior means), drawn grey
    behind the draws, at most max_codes of them (evenly spaced: the map is context here); the
    view opens on the draws and q's 2-sigma ellipse with room around them (double-click shows
    the whole map)."""
    z = np.asarray(z, dtype=float)
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    fig = go.Figure()
    if codes is not None:
        n = len(codes)
        codes = np.asarray(codes, dtype=float)[np.linspace(0, n - 1, min(n, max_codes)).astype(int)]
        of = f"{len(codes)} of {n}" if len(codes) < n else f"{n}"
        fig.add_trace(go.Scatter(x=codes[:, 0], y=codes[:, 1], mode="markers",
                                 name=f"the latent map: mu(x) of {of} test samples",
                                 marker=dict(size=5, color="#b0b0b0", opacity=0.6), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=z[:, 0], y=z[:, 1], mode="markers", name=f"z = mu + sigma * eps ({len(z)} draws)",
                             marker=dict(size=6, color=TERM_COLORS["recon"], opacity=0.7)))
    _add_q_ellipses(fig, mu, sigma)
    if codes is not None:  # open on the draws, not on the whole map (where a sharp q is a dot)
        lo = np.minimum(z.min(axis=0), mu - 2 * sigma)
        hi = np.maximum(z.max(axis=0), mu + 2 * sigma)
        centre, half = (lo + hi) / 2, np.max(hi - lo) * 1.5 / 2 + 1e-6
        fig.update_xaxes(range=[centre[0] - half, centre[0] + half])
        fig.update_yaxes(range=[centre[1] - half, centre[1] + half])
    fig.update_xaxes(title=axis_titles[0])
    fig.update_yaxes(title=axis_titles[1], scaleanchor="x", scaleratio=1)
    return _layout(fig, title, height=420)


def mc_convergence(estimate: np.ndarray, se: np.ndarray, m: int, exact: float | None = None) -> go.Figure:
    """E_q[log p(x|z)] by Monte Carlo with the first M' draws (M' = 1..len), +- one standard
    error (left), and the standard error against M' with the 1/sqrt(M') line (right); the
    slider's M marked in both."""
    estimate, se = np.asarray(estimate, dtype=float), np.asarray(se, dtype=float)
    ms = np.arange(1, len(estimate) + 1)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["estimate +- 1 s.e. (eq 1.31)",
                                                        "standard error, falls as 1/sqrt(M)"])
    fig.add_trace(go.Scatter(x=np.r_[ms, ms[::-1]], y=np.r_[estimate + se, (estimate - se)[::-1]], fill="toself",
                             fillcolor="rgba(44,160,44,0.2)", line=dict(width=0), name="+- 1 s.e.",
                             hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ms, y=estimate, mode="lines", name="estimate with the first M draws",
                             line=dict(color=TERM_COLORS["recon"])), row=1, col=1)
    if exact is not None:
        fig.add_hline(y=exact, line=dict(color="black", dash="dot"), row=1, col=1)
        fig.add_trace(go.Scatter(x=[ms[0], ms[-1]], y=[exact, exact], mode="lines", name="exact (closed form)",
                                 line=dict(color="black", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=ms, y=se, mode="lines", name="s.e. = sd / sqrt(M)",
                             line=dict(color=TERM_COLORS["recon"])), row=1, col=2)
    ref = se[-1] * np.sqrt(len(se)) / np.sqrt(ms)  # c / sqrt(M) through the last point
    fig.add_trace(go.Scatter(x=ms, y=ref, mode="lines", name="1/sqrt(M)", line=dict(color="grey", dash="dash")),
                  row=1, col=2)
    for col in (1, 2):
        fig.add_vline(x=m, line=dict(color="gold", width=2), row=1, col=col)
        fig.update_xaxes(type="log", title_text="M, draws of z", row=1, col=col)
    fig.update_yaxes(title_text="E_q[log p(x|z)], nats", row=1, col=1)
    fig.update_yaxes(type="log", title_text="s.e., nats", row=1, col=2)
    return _layout(fig, "The Monte Carlo estimate of the reconstruction term as M grows", height=360)


def gradient_variance(components: list[str], score_var: list[float], reparam_var: list[float],
                      m: int) -> go.Figure:
    """Per-draw variance of each gradient component, score function against reparameterized."""
    fig = go.Figure([go.Bar(x=components, y=score_var, name="score function: f(z) grad log q(z)",
                            marker_color=TERM_COLORS["gap"]),
                     go.Bar(x=components, y=reparam_var, name="reparameterized: grad f(mu + sigma eps)",
                            marker_color=TERM_COLORS["recon"])])
    fig.update_layout(barmode="group")
    fig.update_yaxes(type="log", title="variance per draw (log scale)")
    return _layout(fig, f"Two gradient estimators of E_q[log p(x|z)] (eq 1.20), {m} draws each", height=340)


# -- 2. the true posterior against q --------------------------------------------------------------

def posterior_heatmap(axes: list[np.ndarray], density: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                      title: str) -> go.Figure:
    """p(z|x) on its grid as a heat map (d = 2) with q(z|x)'s ellipses over it; for d = 1 the
    two densities as curves."""
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    if len(axes) == 1:
        z = np.asarray(axes[0], dtype=float)
        q = np.exp(-0.5 * ((z - mu[0]) / sigma[0]) ** 2) / (sigma[0] * np.sqrt(2 * np.pi))
        fig = go.Figure([go.Scatter(x=z, y=density, mode="lines", name="true posterior p(z|x)",
                                    line=dict(color=TERM_COLORS["log_px"])),
                         go.Scatter(x=z, y=q, mode="lines", name="q(z|x)", line=dict(color=Q_COLOR, dash="dash"))])
        fig.update_xaxes(title="z")
        fig.update_yaxes(title="density")
        return _layout(fig, title, height=400)
    fig = go.Figure(go.Heatmap(x=axes[0], y=axes[1], z=np.asarray(density).T, colorscale=POSTERIOR_SCALE,
                               colorbar=dict(title="p(z|x)"), name="true posterior p(z|x)",
                               hovertemplate="z1 %{x:.3f}, z2 %{y:.3f}: %{z:.3g}<extra></extra>"))
    _add_q_ellipses(fig, mu, sigma)
    fig.update_xaxes(title="z1")
    fig.update_yaxes(title="z2", scaleanchor="x", scaleratio=1)
    return _layout(fig, title, height=460)


def log_px_estimates(values: dict[str, tuple[float, float | None]], title: str) -> go.Figure:
    """Fig 1.4 with several estimates: values[label] = (nats, s.e. or None), drawn as points
    with +- 1 s.e. error bars (none for a deterministic number), highest first."""
    labels = list(values)
    y = [values[k][0] for k in labels]
    err = [values[k][1] if values[k][1] is not None and np.isfinite(values[k][1]) else 0.0 for k in labels]
    colors = [CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i in range(len(labels))]
    fig = go.Figure(go.Scatter(x=labels, y=y, mode="markers+text", name="estimates",
                               error_y=dict(type="data", array=err, visible=True, thickness=2, width=8),
                               marker=dict(size=14, color=colors, symbol="diamond"),
                               text=[f"{v:.2f}" + (f" ± {e:.2f}" if e else "") for v, e in zip(y, err)],
                               textposition="middle right", hovertemplate="%{x}: %{text} nats<extra></extra>"))
    lo, hi = min(v - e for v, e in zip(y, err)), max(v + e for v, e in zip(y, err))
    pad = 0.15 * max(hi - lo, 1e-3)
    fig.update_yaxes(title=NATS, range=[lo - pad, hi + pad])
    fig.update_xaxes(range=[-0.5, len(labels) + 0.1])
    return _layout(fig, title, height=380, showlegend=False)


# -- 4. the linear example's landscape -------------------------------------------------------------

def elbo_landscape(land: dict, path_t: np.ndarray | None = None, path_s: np.ndarray | None = None) -> go.Figure:
    """ELBO(t, s), its recon and its KL (Examples 1.3-1.6) as contour maps over t (encoder sd)
    and s (decoder sd), with the optimum of each fixed t, s = sigma t (dashed), the point
    t = 1, s = sigma (the KL's optimum with its best decoder), and a run's (t, s) per epoch."""
    t, s, sigma = land["t"], land["s"], land["sigma"]
    names = [("elbo", "ELBO(t, s)"), ("recon", "recon E_q[log p(x|z)]"), ("kl", "KL(q(z|x) || p(z))")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[n for _, n in names], horizontal_spacing=0.06)
    for col, (key, _) in enumerate(names, start=1):
        z = land[key]
        if key == "elbo":  # the ELBO falls steeply away from its ridge: show the top 30 nats
            z = np.maximum(z, np.nanmax(z) - 30)
        fig.add_trace(go.Contour(x=t, y=s, z=z, colorscale="Viridis" if key != "kl" else "Reds",
                                 reversescale=False, showscale=False, ncontours=25, name=key,
                                 hovertemplate="t %{x:.3f}, s %{y:.3f}: %{z:.2f} nats<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=t, y=sigma * t, mode="lines", name="best s for each t: s = sigma t",
                                 line=dict(color="white", dash="dash"), showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=[1.0], y=[sigma], mode="markers", name="t = 1, s = sigma",
                                 marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                                 showlegend=col == 1), row=1, col=col)
        if path_t is not None and len(path_t):
            fig.add_trace(go.Scatter(x=path_t, y=path_s, mode="lines+markers", name="this run, per epoch",
                                     marker=dict(size=5, color="#ff4b4b"), line=dict(color="#ff4b4b"),
                                     showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="t, encoder sd", range=[np.log10(t[0]), np.log10(t[-1])],
                         row=1, col=col)
        fig.update_yaxes(type="log", range=[np.log10(s[0]), np.log10(s[-1])],
                         title_text="s, decoder sd" if col == 1 else None, row=1, col=col)
    return _layout(fig, f"The linear example's landscape (Examples 1.3-1.6), d = {land['d']}, sigma = {sigma:g}; "
                        "nats per sample", height=420)


# -- 5. where the KL goes ----------------------------------------------------------------------

def kl_split_bars(split: dict) -> go.Figure:
    """mean KL (closed form) beside I(x; z) + KL(q(z) || p(z)) stacked, with their s.e."""
    fig = go.Figure([
        go.Bar(x=["mean KL(q(z|x) || p(z))"], y=[split["mean_kl"]], name="mean KL, closed form (eq 1.34)",
               marker_color=TERM_COLORS["kl"]),
        go.Bar(x=["split"], y=[split["mutual_info"]], name="I(x; z)", marker_color=TERM_COLORS["log_px"],
               error_y=dict(type="data", array=[split["mutual_info_se"]])),
        go.Bar(x=["split"], y=[split["kl_aggregate"]], name="KL(q(z) || p(z))", marker_color=TERM_COLORS["prior"],
               error_y=dict(type="data", array=[split["kl_aggregate_se"]])),
    ])
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="nats per sample")
    return _layout(fig, "Where the KL goes: mean KL = I(x; z) + KL(q(z) || p(z))", height=340)


def code_histograms(z: np.ndarray, dims: list[int]) -> go.Figure:
    """Per latent dimension j in dims: the histogram of z_j ~ q(z|x) over the test set (the
    aggregate posterior q(z_j)) against the prior's N(0, 1) density."""
    z = np.asarray(z, dtype=float)
    fig = make_subplots(rows=1, cols=len(dims), subplot_titles=[f"z{j + 1}" for j in dims])
    grid = np.linspace(-4, 4, 200)
    prior = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for col, j in enumerate(dims, start=1):
        # binned here, not in the browser: 50 bars instead of every draw (N x draws values)
        density, edges = np.histogram(z[:, j], bins=50, density=True)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=density, width=np.diff(edges),
                             name="q(z_j), aggregate", marker_color=TERM_COLORS["elbo"], opacity=0.7,
                             marker_line_width=0, showlegend=col == 1,
                             hovertemplate="z = %{x:.2f}: density %{y:.3f}<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=grid, y=prior, mode="lines", name="N(0, 1), the prior",
                                 line=dict(color="black"), showlegend=col == 1), row=1, col=col)
    return _layout(fig, "Codes z ~ q(z|x) over the test set, per dimension, against the prior", height=300)
