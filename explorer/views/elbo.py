"""ELBO breakdown: why the ELBO of a sample is what it is (Fig 1.4 with real numbers)."""

from __future__ import annotations

import streamlit as st

from explorer import charts
from explorer.services import explore
from explorer.views import common


def main() -> None:
    st.title("ELBO breakdown")
    res = common.trained_run()
    if res is None:
        return
    summary, run = res
    enc = explore.cached_encoded(summary.path)
    st.caption("log p(x) = ELBO(x) + KL(q(z|x) || p(z|x))  (eq 1.6), and  ELBO(x) = E_q[log p(x|z)] - "
               "KL(q(z|x) || p(z))  (eq 1.10). " + common.NATS_NOTE)

    left, right = st.columns([1, 3])
    with left:
        i = common.sample_input(enc.n, key="elbo_sample_index")
        recon = explore.cached_reconstructions(summary.path)
        common.show_sample(enc, i, recon[i], caption_prefix="")
    with right:
        with st.spinner("Estimating log p(x) with 1000 importance samples..."):
            b = explore.cached_breakdown(summary.path, i)
        cols = st.columns(5)
        cols[0].metric("recon", f"{b['recon']:.2f}", help=f"E_q[log p(x|z)], M = {b['mc_samples']} samples of z")
        cols[1].metric("-KL", f"{-b['kl']:.2f}", help="-KL(q(z|x) || p(z)), closed form")
        cols[2].metric("ELBO", f"{b['elbo']:.2f}", help="recon - KL")
        cols[3].metric("log p(x)", f"{b['log_px']:.2f}", help=f"importance sampled, K = {b['k']}")
        cols[4].metric("gap", f"{b['gap']:.2f}", help="log p(x) - ELBO: an estimate of KL(q(z|x) || p(z|x)) >= 0")
        st.plotly_chart(charts.elbo_waterfall(b["recon"], b["kl"], b["log_px"],
                                              f"Sample {i}: from the reconstruction term to log p(x)"),
                        key="elbo_waterfall")
        st.caption(f"Fig 1.4 with this sample's numbers, nats per sample (higher is better). Green: the "
                   f"reconstruction term (M = {b['mc_samples']} draws of z). Red: minus the KL to the prior "
                   f"takes it down to the ELBO (blue). Orange: the gap up to the importance-sampled "
                   f"log p(x) (purple, K = {b['k']}), which is the KL from q(z|x) to the true posterior: "
                   "how far the encoder is from exact inference.")

    st.subheader("Over the test set")
    st.plotly_chart(charts.term_histograms({"elbo": enc.elbo, "recon": enc.recon, "kl": enc.kl},
                                           marks={"elbo": enc.elbo[i], "recon": enc.recon[i], "kl": enc.kl[i]}),
                    key="term_histograms")
    st.caption(f"Each test sample's ELBO, recon and -KL (one draw of z), {enc.n} samples, nats per sample, "
               "higher is better; dashed: the selected sample.")

    c1, c2 = st.columns(2)
    with c1:
        kl_dims = enc.kl_per_dim.mean(0)
        active = explore.active_dims(enc.mu)
        st.plotly_chart(charts.kl_per_dim_bars(kl_dims, active), key="kl_per_dim")
        st.caption("Mean KL(q(z_j|x) || p(z_j)) per latent dimension over the test set, nats per sample. "
                   "Grey: an inactive unit (its mean mu_j(x) hardly varies, Cov < 0.01): the posterior has "
                   "collapsed to the prior there and the dimension carries no information about x.")
    with c2:
        rows = run.metrics
        if rows:
            st.plotly_chart(charts.training_curves(charts.metrics_arrays(rows), "Over training"),
                            key="elbo_training_curves")
            st.caption("Test (solid) and training (dashed) means per epoch, nats per sample, higher is better.")
        else:
            st.info("This run has no metrics.jsonl: no training curves to show.")


if __name__ == "__main__":
    main()
