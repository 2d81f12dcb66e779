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

from explorer import charts_elbo
from explorer.services import cached_elbo
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
            st.plotly_chart(charts_elbo.posterior_heatmap(p["axes"], p["density"], p["mu"], p["sigma"],
                                                          f"Sample {i}: p(z|x) ∝ p(x|z) p(z) against q(z|x)"),
                            key="posterior_heatmap")
            st.caption(f"The true posterior p(z|x) = p(x|z) p(z) / p(x), evaluated on {p['cells']:,} grid cells "
                       "sized from q (mu ± 8 sigma of q and of the posterior, 4 cells per sd of the narrower); "
                       "cyan: q(z|x)'s 1 and 2 sigma ellipses. Where they differ is the gap of eq 1.6.")
        with right:
            st.plotly_chart(charts_elbo.log_px_estimates({
                "log p(x), quadrature": (p["log_px_quadrature"], None),
                f"log p(x), importance sampled, K = {p['k']}": (p["log_px_is"], p["log_px_is_se"]),
                f"ELBO, M = {p['m']}": (p["elbo"], p["elbo_se"]),
            }, "Fig 1.4: three estimates of log p(x)"), key="log_px_estimates")
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
        st.plotly_chart(charts_elbo.log_px_estimates(values, f"Over the first {t['n']} test samples: from the "
                                                             "truth to the ELBO"), key="truth_ladder")
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


SECTIONS = [true_posterior, theorem_1_1]


if __name__ == "__main__":
    main()
