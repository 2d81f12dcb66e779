"""Numbers that cannot be trusted are said to be unreliable, with the reason, never shown as a
negative gap or left blank (issue 15, item 2, the app's part): a real run whose decoder
overflows float32 (finite weights, 1e20 on one output) on the ELBO page and in the Runs
table; issue 15's degenerate case itself (wine in its own units, standardisation off) on the
ELBO page, sample by sample; and on a healthy run the per-sample figures carry their standard errors, checked
against a direct Monte Carlo of their spread."""

from __future__ import annotations

import math
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from explorer.services import explore
from trainer import RunConfig, fit, load_run
from trainer.elbo import reliability


def overflowing_run(digits_run, root):
    """A copy of the trained digits run whose decoder's last bias is 1e20 on one pixel:
    log p(x|z) overflows to -inf for every sample (a real checkpoint; the weights are finite)."""
    run = root / "overflow"
    shutil.copytree(digits_run, run)
    weights = load_file(run / "model.safetensors")
    weights["decoder_net.4.bias"][0] = 1e20
    save_file(weights, run / "model.safetensors")
    return run


def test_the_elbo_page_says_unreliable_instead_of_a_number(tmp_path, digits_run, make_app):
    root = tmp_path / "runs"
    root.mkdir()
    overflowing_run(digits_run, root)
    at = make_app(root, view="elbo", run="overflow")
    at.run(timeout=180)
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["log p(x)"] == "unreliable" and shown["gap"] == "unreliable", shown
    assert shown["ELBO"] == "unreliable" and shown["recon"] == "unreliable", shown
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("log p(x) and the gap of sample 0 are unreliable: the") and "not finite" in w
               for w in warnings), warnings

    at = make_app(root, view="runs", run="overflow")
    at.run(timeout=180)
    assert not at.exception
    [row] = at.dataframe[0].value.to_dict("records")
    assert row["log p(x)"].startswith("unreliable: "), row


def test_the_degenerate_table_run_shows_unreliable_with_a_reason_never_a_negative_gap(tmp_path, make_app):
    """Issue 15's report: scikit-learn's wine as a CSV, trained without standardisation, showed
    gap = -1.00 or NaN for most samples. The ELBO page now shows, for a sample whose posterior
    float32 cannot resolve, "unreliable" and the reason, and for the others a gap that is not
    negative beyond its noise; never a blank."""
    from sklearn.datasets import load_wine

    csv = tmp_path / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(csv, index=False)
    root = tmp_path / "runs"
    cfg = RunConfig(data=str(csv))
    cfg.train.threads, cfg.standardize = 1, False
    fit(cfg, root / "wine-unscaled")
    run = load_run(root / "wine-unscaled")
    terms = run.elbo_terms(run.load_data().x_test, mc_samples=1)
    narrow = [i for i in range(len(terms["mu"]))
              if reliability(None, None, mu=terms["mu"][i], logvar=terms["logvar"][i]) is not None]
    healthy = [i for i in range(len(terms["mu"])) if i not in narrow]
    assert narrow, "the degenerate case was not reproduced: no posterior is narrower than float32 resolves"
    for i in narrow[:1] + healthy[:1]:
        at = make_app(root, view="elbo", run="wine-unscaled", sample=i)
        at.run(timeout=180)
        assert not at.exception, [e.value for e in at.exception]
        shown = {m.label: m.value for m in at.metric}
        assert shown.get("gap") not in (None, "", "nan", "NaN"), shown
        warnings = [w.value for w in at.warning]
        if i in narrow:
            assert shown["gap"] == "unreliable" and shown["log p(x)"] == "unreliable", shown
            assert any(f"sample {i} are unreliable: the posterior's standard deviation" in w for w in warnings), warnings
        elif shown["gap"] != "unreliable":
            b = explore.sample_breakdown(run, run.load_data().x_test[i].numpy(), mc_samples=100, k=1000, seed=0)
            assert float(shown["gap"]) > -3 * b["gap_se"] - 0.01, (shown, b["gap_se"])
        else:
            assert any(f"sample {i} are unreliable: " in w for w in warnings), warnings
    # the Runs table's test-set log p(x): a number or "unreliable: why", never a blank
    at = make_app(root, view="runs", run="wine-unscaled")
    at.run(timeout=180)
    [row] = at.dataframe[0].value.to_dict("records")
    assert row["log p(x)"].startswith(f"unreliable: {len(narrow)} of {len(terms['mu'])} samples have a posterior "
                                      "whose standard deviation is below float32's resolution"), row


def test_per_sample_standard_errors_match_the_spread_of_repeated_estimates(digits_run):
    run = load_run(digits_run)
    x = run.load_data().x_test[3].numpy()
    b = explore.sample_breakdown(run, x, mc_samples=100, k=200, seed=0)
    assert b["gap"] > -3 * b["gap_se"]
    # the same estimate with 40 other seeds: its spread is the standard error
    again = [explore.sample_breakdown(run, x, mc_samples=100, k=200, seed=s) for s in range(10, 90, 2)]
    for name in ("recon", "log_px"):
        spread = float(np.std([a[name] for a in again], ddof=1))
        assert 0.6 < b[f"{name}_se"] / spread < 1.6, (name, b[f"{name}_se"], spread)
    # the figures themselves are those of the trainer's estimators, unchanged
    xt = torch.as_tensor(x)[None]
    assert b["recon"] == float(run.elbo_terms(xt, mc_samples=100, seed=0)["recon"][0])
    assert b["log_px"] == float(run.log_px(xt, k=200, seed=1)[0])
    assert math.isclose(b["gap_se"], math.hypot(b["recon_se"], b["log_px_se"]))
