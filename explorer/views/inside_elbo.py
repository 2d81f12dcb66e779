"""Inside the ELBO: the central arguments of the tutorial's chapter 1, happening on the active
run, one section each (vae-math.md's equation numbers in every title and caption):

    reparameterization   z = mu + sigma * eps for the selected x, the Monte Carlo estimate as M
                         grows, and the two gradient estimators (eq 1.16-1.24, 1.20, 1.31)
    true_posterior       p(z|x) on a grid against q(z|x), log p(x) three ways (Fig 1.4, eq 1.6)
    theorem_1_1          exact numbers for linear runs; the distance from the data's own density
                         split into "the model is wrong" and "the encoder is wrong"
    linear_landscape     ELBO(t, s) of Examples 1.3-1.6 with the run's (t, s) per epoch
    where_the_kl_goes    mean KL = I(x; z) + KL(q(z) || p(z)), codes against N(0, 1)
    how_many_draws       the draws behind every per-sample number of the app, with their +-
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import charts, charts_elbo
from explorer.services import cached_elbo, inside_elbo
from explorer.views import common


def main() -> None:
    page = common.explore_page("Inside the ELBO")
    if page is None:
        return
    st.caption("The chapter's arguments on this run's selected test sample. Equation numbers are those of the "
               "tutorial (vae-math.md). " + common.NATS_NOTE)
    i = common.sample_input(page.enc.n, key="inside_sample_index")
    for section in SECTIONS:
        section(page, i)


def _pm(value: float, se: float | None) -> str:
    return f"{value:.2f} ± {se:.2f}" if se is not None and np.isfinite(se) else f"{value:.2f}"


# -- 1. the reparameterization trick ---------------------------------------------------------------

M_DEFAULT = 10


@st.fragment  # a move of the M slider reruns this section only, not the page's other five
def reparameterization(page: common.ExplorePage, i: int) -> None:
    st.subheader("The reparameterization trick  (Fig 1.5, eq 1.16-1.24, 1.31)")
    with st.container(key="section_reparam"):
        r = cached_elbo.reparameterization(page.checkpoint, i)
        if "reparam_m" not in st.session_state:
            st.session_state["reparam_m"] = M_DEFAULT
        m = st.select_slider("M, the number of draws eps ~ N(0, I)", options=inside_elbo.M_CHOICES, key="reparam_m",
                             help="z_m = mu(x) + sigma(x) * eps_m; the estimate averages log p(x|z_m) over them")
        left, right = st.columns([3, 2])
        with left:
            a, b = inside_elbo.shown_dims(page.enc.kl_per_dim)
            if page.enc.latent_dim == 1:  # the line z = mu + sigma * eps itself
                pts, mu, sd = np.c_[r.z[:m, 0], r.eps[:m, 0]], np.r_[r.mu[0], 0.0], np.r_[r.sigma[0], 1.0]
                titles = ("z", "eps")
                codes = None
            else:
                pts, mu, sd = r.z[:m][:, [a, b]], r.mu[[a, b]], r.sigma[[a, b]]
                titles = (f"z{a + 1}", f"z{b + 1}")
                codes = page.enc.mu[:, [a, b]]  # the latent map behind the draws
            common.chart(common.shared_figure(
                ("reparam_cloud", page.checkpoint, i, m), lambda: charts_elbo.reparam_cloud(
                pts, mu, sd, titles, f"Sample {i}: M = {m} draws of z = mu + sigma * eps (eq 1.24)", codes)),
                key="reparam_cloud")
        with right:
            est, se = float(r.estimate[m - 1]), float(r.se[m - 1])
            c = st.columns(2)
            c[0].metric(f"estimate, M = {m}", f"{est:.3f}", help="(1/M) sum_m log p(x|z_m), eq 1.31, nats")
            c[1].metric("standard error", f"{se:.3f}" if np.isfinite(se) else "n/a (M = 1)",
                        help="sd of log p(x|z_m) over the draws / sqrt(M): the ± of the estimate")
            if r.exact is not None:
                st.metric("exact E_q[log p(x|z)]", f"{r.exact:.3f}", help="closed form of the linear model")
            st.markdown(
                "Sampling z ~ q(z|x) directly hides mu and sigma inside the sampler, so no gradient reaches "
                "them. Writing **z = mu + sigma * eps** with eps ~ N(0, I) drawn outside the network (eq 1.22-1.24) "
                "makes z a differentiable function of mu and sigma: the gradient of log p(x|z) passes "
                "through z to the encoder (eq 1.20), and the ELBO is estimated from the same draws (eq 1.31).")
        common.chart(common.shared_figure(("mc_convergence", page.checkpoint, i, m),
                                             lambda: charts_elbo.mc_convergence(r.estimate, r.se, m, r.exact)),
                        key="mc_convergence")
        st.caption(f"The same {inside_elbo.M_MAX} draws, used 1, 2, ..., {inside_elbo.M_MAX} at a time: the "
                   "estimate settles, and its standard error falls as 1/sqrt(M) (dashed). Gold: the slider's M.")
        g = cached_elbo.gradient_comparison(page.checkpoint, i)
        left, right = st.columns([3, 2])
        with left:
            common.chart(common.shared_figure(
                ("gradient_variance", page.checkpoint, i), lambda: charts_elbo.gradient_variance(
                g["components"], g["score"]["per_component_variance"], g["reparam"]["per_component_variance"], g["m"])),
                            key="gradient_variance")
        with right:
            st.metric("variance ratio, score function / reparameterized", f"{g['ratio']:.3g}",
                      help="per-draw variance summed over the gradient's components")
            st.caption(f"Both estimate d E_q[log p(x|z)] / d(mu, sigma) for this x from the same {g['m']} draws "
                       "and agree on average: the score function f(z) * grad log q(z) (which needs no gradient of "
                       "f) and the reparameterized grad f(mu + sigma * eps) (eq 1.20). The second varies far "
                       "less from draw to draw, which is why VAEs are trained with it.")


# -- 2. the true posterior against q ---------------------------------------------------------------

def true_posterior(page: common.ExplorePage, i: int) -> None:
    st.subheader("The true posterior against q(z|x)  (Fig 1.4, eq 1.6)")
    d = page.enc.latent_dim
    if d > 2:
        st.info(f"The true posterior p(z|x) is computed on a grid, which needs a latent space of 1 or 2 "
                f"dimensions; this run has d = {d}. (For a linear run, Theorem 1.1 below is exact in any d.)")
        return
    with st.container(key="section_posterior"):
        with st.spinner("Computing p(z|x) on a grid..."):
            p = cached_elbo.true_posterior(page.checkpoint, i)
        left, right = st.columns([3, 2])
        with left:
            common.chart(common.shared_figure(
                ("posterior_heatmap", page.checkpoint, i), lambda: charts_elbo.posterior_heatmap(
                p["axes"], p["density"], p["mu"], p["sigma"], f"Sample {i}: p(z|x) ∝ p(x|z) p(z) against q(z|x)")),
                            key="posterior_heatmap")
            st.caption(f"The true posterior p(z|x) = p(x|z) p(z) / p(x), evaluated on {p['cells']:,} grid cells "
                       "sized from q (mu ± 8 sigma of q and of the posterior, 4 cells per sd of the narrower); "
                       "cyan: q(z|x)'s 1 and 2 sigma ellipses. Where they differ is the gap of eq 1.6.")
        with right:
            common.chart(common.shared_figure(
                ("log_px_estimates", page.checkpoint, i), lambda: charts_elbo.log_px_estimates({
                "log p(x), quadrature": (p["log_px_quadrature"], None),
                f"log p(x), importance sampled, K = {p['k']}": (p["log_px_is"], p["log_px_is_se"]),
                f"ELBO, M = {p['m']}": (p["elbo"], p["elbo_se"]),
            }, "Fig 1.4: three estimates of log p(x)")), key="log_px_estimates")
            c = st.columns(2)
            c[0].metric("gap: log p(x) − ELBO", f"{p['gap_from_estimates']:.2f}",
                        help=f"quadrature log p(x) minus the ELBO (M = {p['m']}, ± {p['elbo_se']:.2f})")
            c[1].metric("KL(q || p(z|x)) on the grid", f"{p['kl_to_posterior']:.2f}",
                        help="sum over the grid of q (log q - log p(z|x)) * cell area: no sampling")
        st.caption(f"The quadrature is the grid's normaliser (deterministic). The importance-sampled estimate "
                   f"uses K = {p['k']} draws from q (± its delta-method s.e., {p['log_px_is_se']:.2f}); the ELBO "
                   f"M = {p['m']} draws of z (± {p['elbo_se']:.2f}). The gap read two ways, log p(x) − ELBO and "
                   "KL(q(z|x) || p(z|x)) from the grid, agree within the ELBO's ± (Theorem 1.1).")


# -- 3. Theorem 1.1 with exact numbers --------------------------------------------------------------

def theorem_1_1(page: common.ExplorePage, i: int) -> None:
    st.subheader("Theorem 1.1 with exact numbers  (eq 1.6)")
    with st.container(key="section_theorem"):
        exact = cached_elbo.theorem_for_sample(page.checkpoint, i)
        if exact is not None:
            c = st.columns(4)
            c[0].metric("ELBO (exact)", f"{exact['elbo']:.4f}",
                        help="E_q[log p(x|z)] (an expectation of a quadratic) - KL(q || p(z)), closed form")
            c[1].metric("KL(q || p(z|x)) (exact)", f"{exact['kl_to_posterior']:.4f}",
                        help="Theorem 1.3 (eq 1.25) against the model's Gaussian posterior")
            c[2].metric("log p_θ(x) (exact)", f"{exact['model_log_px']:.4f}",
                        help="log N(x | b, W W^T + s^2 I), the linear model's marginal")
            diff = exact["elbo"] + exact["kl_to_posterior"] - exact["model_log_px"]
            c[3].metric("ELBO + KL - log p(x)", f"{diff:.1e}", help="Theorem 1.1: zero up to rounding")
            st.caption(f"Sample {i}, no sampling anywhere: this run's decoder is linear with Gaussian noise, so "
                       "p(x) = N(b, W W^T + s² I) and p(z|x) is Gaussian. ELBO + KL(q(z|x) || p(z|x)) = log p(x) "
                       "holds to rounding, for any encoder.")
        else:
            st.caption("This run's decoder is not linear with Gaussian noise, so p(x) has no closed form here; "
                       "the quadrature above (d ≤ 2) and the importance-sampled estimate stand in for it.")
        with st.spinner("Comparing with the truth over the test set..."):
            t = cached_elbo.distance_from_truth(page.checkpoint)
        values = {}
        if "data_log_px" in t:
            values["the data's exact log p(x)"] = (t["data_log_px"], t["data_log_px_se"])
        values[f"model's log p_θ(x), {t['model_log_px_how']}"] = (t["model_log_px"], t["model_log_px_se"])
        values[f"IWAE, K = {t['iwae_k']}"] = (t["iwae"], t["iwae_se"])
        values[f"ELBO, {t['elbo_how']}"] = (t["elbo"], t["elbo_se"])
        common.chart(common.shared_figure(("truth_ladder", page.checkpoint), lambda: charts_elbo.log_px_estimates(
            values, f"Over the first {t['n']} test samples: from the truth to the ELBO")), key="truth_ladder")
        c = st.columns(2)
        if "model_wrong" in t:
            c[0].metric("the model is wrong", _pm(t["model_wrong"], t["model_wrong_se"]),
                        help="data's exact log p(x) - the model's log p_θ(x): an estimate of KL(p_data || p_θ) >= 0")
        else:
            c[0].caption("This data set's own density is not known, so how wrong the model is cannot be measured "
                         "(gmm2d and linear-gaussian know theirs).")
        c[1].metric("the encoder is wrong", _pm(t["encoder_wrong"], t["encoder_wrong_se"]),
                    help="the model's log p_θ(x) - ELBO: the mean KL(q(z|x) || p_θ(z|x)) of eq 1.6")
        st.caption(f"Means over the first {t['n']} test samples, ± one standard error over those samples (of the "
                   "paired differences for the two distances). Error bars hide the spread of x itself; the "
                   "distances are paired, so they are measured much more precisely.")


# -- 4. the linear example's landscape -------------------------------------------------------------

def linear_landscape(page: common.ExplorePage, i: int) -> None:
    st.subheader("The linear example's landscape  (Examples 1.3-1.6)")
    land = cached_elbo.linear_landscape(page.checkpoint)
    if land is None:
        st.info("This section draws ELBO(t, s) of the tutorial's linear example: it needs a run with the "
                "**linear** architecture on **linear-gaussian** data (train one on the Train page).")
        return
    with st.container(key="section_landscape"):
        path = land["path"]
        common.chart(common.shared_figure(("elbo_landscape", page.checkpoint), lambda: charts_elbo.elbo_landscape(
            land, None if path is None else path["t"], None if path is None else path["s"])), key="elbo_landscape")
        d, sigma = land["d"], land["sigma"]
        c = st.columns(3)
        if path is not None:
            c[0].metric(f"this run after epoch {int(path['epoch'][-1])}", f"t = {path['t'][-1]:.3f}, s = {path['s'][-1]:.3f}",
                        help="t: the encoder's sigma (RMS over latent dimensions), s: sigma_dec")
        else:
            c[0].caption("This run has no saved (t, s) path (it was trained before paths were recorded).")
        c[1].metric("ELBO at t = 1, s = σ", f"{land['elbo_t1']:.3f}",
                    help="the KL's optimum t = 1 with its best decoder, s = sigma (Example 1.6)")
        c[2].metric("the data's exact log p(x)", f"{land['data_log_px']:.3f}",
                    help="-(d/2) log(2 pi e sigma^2): what t, s -> 0 together reach (Examples 1.4, 1.5)")
        st.caption(f"The hand-set linear VAE of vae-math.md (encoder mean (x - mu)/sigma with sd t, decoder mean "
                   f"sigma z + mu with sd s), d = {d}, sigma = {sigma:g}, expected over the data; no sampling. The "
                   "KL alone is smallest at t = 1 (right); for each t the best s is sigma t (dashed), where recon "
                   "and KL trade off (middle, right); along that ridge the ELBO rises as t and s shrink together. "
                   "Red: this run's encoder sigma and sigma_dec after each epoch (its free affine maps are not the "
                   "hand-set ones, so only these two coordinates are compared).")


# -- 5. where the KL goes --------------------------------------------------------------------------

def where_the_kl_goes(page: common.ExplorePage, i: int) -> None:
    st.subheader("Where the KL goes  (eq 1.34; Hoffman and Johnson 2016)")
    enc = page.enc
    with st.container(key="section_kl"):
        s = cached_elbo.kl_split(page.checkpoint)
        c = st.columns(3)
        c[0].metric("mean KL(q(z|x) || p(z))", f"{s['mean_kl']:.3f}", help="closed form (eq 1.34), test-set mean")
        c[1].metric("I(x; z)", _pm(s["mutual_info"], s["mutual_info_se"]),
                    help=f"mutual information between the test sample and its code under q; at most log N = "
                         f"{s['max_mutual_info']:.2f}")
        c[2].metric("KL(q(z) || p(z))", _pm(s["kl_aggregate"], s["kl_aggregate_se"]),
                    help="the aggregate posterior q(z) = mean over x of q(z|x), against the prior")
        left, right = st.columns(2)
        with left:
            common.chart(common.shared_figure(("kl_split", page.checkpoint), lambda: charts_elbo.kl_split_bars(s)),
                            key="kl_split")
        with right:
            common.chart(common.shared_figure(("inside_kl_per_dim", page.checkpoint), lambda: charts.kl_per_dim_bars(
                enc.kl_per_dim.mean(0), enc.active_dims)), key="inside_kl_per_dim")
        st.markdown(
            "The KL term pays for two things: **I(x; z)**, the information the codes carry about which sample "
            "they came from (what a useful code must pay), and **KL(q(z) || p(z))**, how far the codes of the "
            "whole data set, pooled, are from the prior (the holes and clumps a generator would fall into). "
            "The bars on the right split the same mean KL by latent dimension instead.")
        dims = [int(j) for j in np.argsort(-enc.kl_per_dim.mean(0))[:6]]
        common.chart(common.shared_figure(("code_histograms", page.checkpoint),
                                             lambda: charts_elbo.code_histograms(s["codes_z"], dims)),
                        key="code_histograms")
        st.caption(f"Monte Carlo over {s['codes']} test codes with {s['draws_per_code']} draws z ~ q(z|x) each "
                   f"({s['draws']:,} draws); ± one standard error over the codes. The histograms are those draws "
                   "(samples of q(z)) per dimension, largest KL first; black: N(0, 1).")


# -- 6. how many draws ------------------------------------------------------------------------------

def how_many_draws(page: common.ExplorePage, i: int) -> None:
    st.subheader("How many draws  (eq 1.31 and the importance-sampled log p(x))")
    r = cached_elbo.reparameterization(page.checkpoint, i)
    imp = cached_elbo.importance(page.checkpoint, i)
    sd = float(np.std(r.log_px_given_z, ddof=1))
    rows = [
        {"number": "recon on the Latent map and in the test-set histograms", "draws": "M = 1 (seed 0)",
         "value": f"{page.enc.recon[i]:.2f}", "±": f"{sd:.2f} (one draw: the sd of log p(x|z))"},
        {"number": "recon on the ELBO breakdown", "draws": f"M = {inside_elbo.ELBO_M}",
         "value": f"{r.estimate[inside_elbo.ELBO_M - 1]:.2f} (this page's draws)",
         "±": f"{r.se[inside_elbo.ELBO_M - 1]:.2f}"},
        {"number": "recon here, all draws", "draws": f"M = {inside_elbo.M_MAX}",
         "value": f"{r.estimate[-1]:.2f}", "±": f"{r.se[-1]:.2f}"},
        {"number": "log p(x), importance sampled (ELBO breakdown, section 2)", "draws": f"K = {imp['k']}",
         "value": f"{imp['log_px']:.2f}", "±": f"{imp['se']:.2f} (delta method)"},
        {"number": "KL(q(z|x) || p(z))", "draws": "none (closed form, eq 1.34)",
         "value": f"{page.enc.kl[i]:.2f}", "±": "exact"},
    ]
    with st.container(key="section_draws"):
        st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(f"Sample {i}. The same sample's recon reads differently on different pages because each page "
               "averages a different number of draws of z: each value is an estimate of one number, "
               "E_q[log p(x|z)], with the ± shown (sd / sqrt(M)).")


SECTIONS = [reparameterization, true_posterior, theorem_1_1, linear_landscape, where_the_kl_goes, how_many_draws]


if __name__ == "__main__":
    main()
