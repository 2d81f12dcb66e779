"""ELBO breakdown: why the ELBO of a sample is what it is (Fig 1.4 with real numbers)."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from explorer import charts
from explorer.services import cached, explore
from explorer.services.reliability import reliability
from explorer.views import common
from trainer import Run


def main() -> None:
    page = common.explore_page("ELBO breakdown")
    if page is None:
        return
    st.caption("log p(x) = ELBO(x) + KL(q(z|x) || p(z|x))  (eq 1.6), and  ELBO(x) = E_q[log p(x|z)] - "
               "KL(q(z|x) || p(z))  (eq 1.10). " + common.NATS_NOTE)
    left, right = st.columns([1, 3])
    with left:
        i = selected_sample(page)
    with right:
        sample_breakdown(page.checkpoint, i)
    over_the_test_set(page.checkpoint, page.enc, i)
    c1, c2 = st.columns(2)
    with c1:
        kl_per_dim(page.checkpoint, page.enc)
    with c2:
        training_curves(page.checkpoint, page.run)
    st.subheader("Take the results away")
    common.download_codes(page.checkpoint, page.summary.name, key="download_codes_elbo")


def selected_sample(page: common.ExplorePage) -> int:
    """The sample's index (shared with the latent map), its input and reconstruction."""
    i = common.sample_input(page.enc.n, key="elbo_sample_index")
    recon = cached.reconstructions(page.checkpoint)
    common.show_sample(page.enc, i, recon[i], caption_prefix="")
    return i


def sample_breakdown(ckpt: cached.Checkpoint, i: int) -> None:
    """Sample i's recon, -KL, ELBO, log p(x) and gap: as numbers with their standard errors,
    and as Fig 1.4; figures that cannot be trusted are said to be unreliable, and why."""
    with st.spinner("Estimating log p(x) with 1000 importance samples..."):
        b = cached.breakdown(ckpt, i)
    why = reliability(b)
    m, k = b["mc_samples"], b["k"]
    cols = st.columns(5)
    cols[0].metric("recon", number(b["recon"]), help=f"E_q[log p(x|z)], M = {m} draws of z; "
                                                     f"± {b['recon_se']:.2g} (one standard error)")
    cols[1].metric("-KL", number(-b["kl"]), help="-KL(q(z|x) || p(z)), closed form (exact)")
    cols[2].metric("ELBO", number(b["elbo"]), help=f"recon - KL; ± {b['elbo_se']:.2g}")
    if why:
        cols[3].metric("log p(x)", "unreliable", help=f"importance sampled, K = {k}: {why}")
        cols[4].metric("gap", "unreliable", help=why)
        st.warning(f"log p(x) and the gap of sample {i} are unreliable: {why}.")
        return
    cols[3].metric("log p(x)", number(b["log_px"]), help=f"importance sampled, K = {k}; ± {b['log_px_se']:.2g}")
    cols[4].metric("gap", number(b["gap"]), help="log p(x) - ELBO: an estimate of KL(q(z|x) || p(z|x)) >= 0; "
                                                 f"± {b['gap_se']:.2g}")
    st.caption(f"± one standard error (Monte Carlo): recon and ELBO ± {b['recon_se']:.2g} (M = {m} draws of z), "
               f"log p(x) ± {b['log_px_se']:.2g} (K = {k} importance samples), gap ± {b['gap_se']:.2g}; "
               "the KL is exact.")
    common.chart(common.shared_figure(("elbo_waterfall", ckpt, i), lambda: charts.elbo_waterfall(
        b["recon"], b["kl"], b["log_px"], f"Sample {i}: from the reconstruction term to log p(x)")),
                 key="elbo_waterfall")
    st.caption(f"Fig 1.4 with this sample's numbers, nats per sample (higher is better). Green: the "
               f"reconstruction term (M = {m} draws of z). Red: minus the KL to the prior "
               f"takes it down to the ELBO (blue). Orange: the gap up to the importance-sampled "
               f"log p(x) (purple, K = {k}), which is the KL from q(z|x) to the true posterior: "
               "how far the encoder is from exact inference.")


def number(v: float) -> str:
    """A metric's value: 2 decimals, or 'unreliable' when it is not finite."""
    return f"{v:.2f}" if math.isfinite(v) else "unreliable"


def over_the_test_set(ckpt: cached.Checkpoint, enc: explore.Encoded, i: int) -> None:
    """Histograms of every test sample's ELBO, recon and -KL, sample i marked."""
    st.subheader("Over the test set")
    common.chart(common.shared_figure(("term_histograms", ckpt, i), lambda: charts.term_histograms(
        {"elbo": enc.elbo, "recon": enc.recon, "kl": enc.kl},
        marks={"elbo": enc.elbo[i], "recon": enc.recon[i], "kl": enc.kl[i]})),
                    key="term_histograms")
    bad = int((~np.isfinite(enc.elbo)).sum())
    if bad:
        st.warning(f"unreliable: the ELBO of {bad} of {enc.n} test samples is not finite; they are left out here.")
    st.caption(f"Each test sample's ELBO, recon and -KL from **one draw of z** (M = 1: each value is noisy; "
               f"the breakdown above uses M = 100), {enc.n} samples, nats per sample, higher is better; "
               "dashed: the selected sample.")


def kl_per_dim(ckpt: cached.Checkpoint, enc: explore.Encoded) -> None:
    """The mean KL of each latent dimension, inactive ones in grey."""
    kl_dims = enc.kl_per_dim.mean(0)
    common.chart(common.shared_figure(("kl_per_dim", ckpt), lambda: charts.kl_per_dim_bars(kl_dims, enc.active_dims)),
                 key="kl_per_dim")
    st.caption("Mean KL(q(z_j|x) || p(z_j)) per latent dimension over the test set, nats per sample. "
               "Grey: an inactive unit (its mean mu_j(x) hardly varies, Cov < 0.01): the posterior has "
               "collapsed to the prior there and the dimension carries no information about x.")


def training_curves(ckpt: cached.Checkpoint, run: Run) -> None:
    """The run's ELBO and its terms per epoch, from metrics.jsonl."""
    def figure():
        rows = run.metrics
        return charts.training_curves(charts.metrics_arrays(rows), "Over training") if rows else None

    fig = common.shared_figure(("elbo_training_curves", ckpt, common.file_signature(run.path / "metrics.jsonl")),
                               figure)
    if fig is not None:
        common.chart(fig, key="elbo_training_curves")
        st.caption("Test (solid) and training (dashed) means per epoch, nats per sample, higher is better.")
    else:
        st.info("This run has no metrics.jsonl: no training curves to show.")


if __name__ == "__main__":
    main()
