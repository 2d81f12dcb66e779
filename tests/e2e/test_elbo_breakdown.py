"""ELBO breakdown: the numbers the app shows for the active run agree with the trainer's own
command line, `python -m trainer eval RUN --json`, within Monte Carlo noise.

The reference is the CLI run with other seeds than the app's, so the two only share the
model and the data, not the random draws; the noise scale is measured from the spread of
the CLI's estimates over those seeds (each is a mean over the test set, nats per sample)."""

import json
import math
import time
import statistics
import subprocess
import sys

import pytest

from tests.e2e import harness
from tests.e2e.conftest import open_view

REF_SEEDS = (1, 2, 3)
K = 100  # importance samples, as the Runs table's log p(x) (explorer.services.explore.EVAL_K)
ROUNDING = 0.005  # the page shows 2 decimals


def cli_eval(run_dir, seed: int) -> dict:
    p = subprocess.run([sys.executable, "-m", "trainer", "eval", str(run_dir), "--json", "--k", str(K),
                        "--seed", str(seed), "--threads", "1", "--no-quadrature"],  # the grid is not compared
                       cwd=harness.ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def reference(trained_run) -> dict:
    """term -> (mean over the CLI's seeds, tolerance for one other estimate of the same mean)."""
    evals = [cli_eval(trained_run.path, s) for s in REF_SEEDS]
    ref = {}
    for term in ("elbo", "recon", "kl", "log_px"):
        values = [e[term] for e in evals]
        sd = statistics.stdev(values)
        # another estimate minus the mean of 3: sd * sqrt(1 + 1/3); 6 of those, at least 0.05 nats
        ref[term] = (statistics.fmean(values), max(6 * sd * math.sqrt(4 / 3), 0.05) + ROUNDING)
    return ref


def close(shown: float, term: str, reference: dict) -> bool:
    mean, tol = reference[term]
    return abs(shown - mean) <= tol


def test_elbo_breakdown_agrees_with_trainer_eval(page, app, trained_run, reference):
    open_view(page, app, "elbo", "ELBO breakdown", run=trained_run.name)

    # The selected sample's terms, as shown: ELBO = recon - KL, gap = log p(x) - ELBO >= 0.
    m = harness.metrics(page)
    assert set(m) == {"recon", "-KL", "ELBO", "log p(x)", "gap"}, m
    assert abs(m["ELBO"] - (m["recon"] + m["-KL"])) <= 2 * ROUNDING + 1e-9, m
    assert abs(m["gap"] - (m["log p(x)"] - m["ELBO"])) <= 2 * ROUNDING + 1e-9, m
    assert m["-KL"] <= 0 and m["gap"] > -0.05, m

    # Over the test set: the per-sample terms drawn in the histograms, averaged, agree with
    # the CLI's test-set means.
    hist = harness.keyed(page, "term_histograms")
    hist.locator(".js-plotly-plot").first.wait_for()
    traces = harness.plotly_traces(hist)
    drawn = {t["name"].split()[0]: t for t in traces if t["type"] == "histogram"}
    assert set(drawn) == {"ELBO", "recon", "-KL(q(z|x)"}, list(drawn)
    elbo = statistics.fmean(drawn["ELBO"]["x"])
    recon = statistics.fmean(drawn["recon"]["x"])
    kl = -statistics.fmean(drawn["-KL(q(z|x)"]["x"])
    assert len(drawn["ELBO"]["x"]) == len(drawn["recon"]["x"]) == len(drawn["-KL(q(z|x)"]["x"])
    assert close(elbo, "elbo", reference), (elbo, reference["elbo"])
    assert close(recon, "recon", reference), (recon, reference["recon"])
    assert abs(kl - reference["kl"][0]) <= 1e-3 * max(1.0, abs(kl)), (kl, reference["kl"])  # closed form

    # The selected sample's -KL is the closed form: the same number as its histogram entry.
    assert abs(drawn["-KL(q(z|x)"]["x"][0] - m["-KL"]) <= ROUNDING + 1e-6

    # Another sample, typed in: its terms are shown instead.
    box = harness.keyed(page, "elbo_sample_index").locator("input")
    box.fill("7")
    box.press("Enter")
    page.get_by_text("Sample 7: from the reconstruction term to log p(x)").wait_for()
    harness.wait_idle(page)
    m7 = harness.metrics(page)
    assert abs(drawn["-KL(q(z|x)"]["x"][7] - m7["-KL"]) <= ROUNDING + 1e-6
    assert m7 != m
    harness.assert_no_traceback(page)


def test_runs_table_agrees_with_trainer_eval(page, app, trained_run, reference):
    open_view(page, app, "runs", "Runs", run=trained_run.name)
    # the table is drawn from the kept estimates first, then redrawn once log p(x) is estimated
    deadline = time.monotonic() + harness.PAGE_S
    while True:
        rows = {r["run"]: r for r in harness.table_rows(harness.keyed(page, "runs_table"))}
        row = rows.get(trained_run.name, {})
        if row.get("log p(x)") or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    assert row.get("log p(x)"), f"no log p(x) for {trained_run.name} within {harness.PAGE_S} s: {row}"
    assert row.get("state") == "done", row
    for column, term in (("test ELBO", "elbo"), ("recon", "recon"), ("KL", "kl"), ("log p(x)", "log_px")):
        assert close(float(row[column]), term, reference), (column, row[column], reference[term])
