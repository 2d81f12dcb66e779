"""Inside the ELBO, in a real browser: every section renders for a digits run (the first
start's), a gmm2d run and a linear run, with the numbers each figure states; moving M changes
the reparameterized estimate and its error bar.

The gmm2d and linear runs are trained here, small, into the app's runs folder (after the
first start, which needs an empty one)."""

from __future__ import annotations

import re

import pytest

from tests.e2e import harness
from tests.e2e.conftest import open_view

LINEAR_RUN = "linear-inside"
GMM_RUN = "gmm2d-inside"


@pytest.fixture(scope="module")
def runs(app, trained_run) -> dict[str, str]:
    from trainer import RunConfig, fit

    def train(name: str, data: str, epochs: int, **model) -> str:
        cfg = RunConfig(data=data)
        cfg.train.epochs, cfg.train.threads = epochs, 1
        for key, value in model.items():
            setattr(cfg.model, key, value)
        fit(cfg, app.runs_dir / name)
        return name

    return {"digits": trained_run.name,
            "gmm2d": train(GMM_RUN, "gmm2d:n=2000", 5, hidden=[32, 32]),
            "linear": train(LINEAR_RUN, "linear-gaussian:d=4,n=2000", 20, arch="linear", latent_dim=2)}


def chart(page, key: str):
    c = harness.keyed(page, key)
    c.locator(".js-plotly-plot").first.wait_for()
    return c


def estimates_shown(page, key: str) -> dict[str, float]:
    """The points of a log_px_estimates chart: label -> nats."""
    points = [t for t in harness.plotly_traces(chart(page, key)) if t["name"] == "estimates"]
    assert len(points) == 1, points
    return dict(zip(points[0]["x"], points[0]["y"]))


def shown(scope) -> dict[str, str]:
    """The st.metric texts in scope: label -> value as shown (values may read "1.23 ± 0.04")."""
    out = {}
    for m in scope.locator('[data-testid="stMetric"]').all():
        label = m.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = m.locator('[data-testid="stMetricValue"]').inner_text().strip().replace("\u2212", "-")
    return out


def number(text: str) -> float:
    return float(re.match(r"\s*(-?[\d.]+(?:e[+-]?\d+)?)", text).group(1))


@pytest.mark.parametrize("kind", ["digits", "gmm2d", "linear"])
def test_every_section_renders(page, app, runs, kind):
    open_view(page, app, "inside-elbo", "Inside the ELBO", run=runs[kind])
    harness.wait_drawn(page)

    # 2. the true posterior (all three runs have d = 2): a heat map with q's ellipses, and
    # Fig 1.4's three estimates, the quadrature and importance sampling agreeing
    heat = harness.plotly_traces(chart(page, "posterior_heatmap"))
    assert [t["type"] for t in heat].count("heatmap") == 1
    assert any(t["name"].startswith("q(z|x), 1 sigma") for t in heat)
    est = estimates_shown(page, "log_px_estimates")
    quad = est["log p(x), quadrature"]
    imp = next(v for k, v in est.items() if k.startswith("log p(x), importance sampled, K = 1000"))
    elbo = next(v for k, v in est.items() if k.startswith("ELBO, M = 100"))
    assert abs(quad - imp) < 0.5, est
    assert elbo < quad + 0.5, est
    m = shown(harness.keyed(page, "section_posterior"))
    assert number(m["KL(q || p(z|x)) on the grid"]) > 0

    # 3. Theorem 1.1: exact numbers for the linear run; the distances from the truth
    theorem = shown(harness.keyed(page, "section_theorem"))
    if kind == "linear":
        total = number(theorem["ELBO (exact)"]) + number(theorem["KL(q || p(z|x)) (exact)"])
        assert abs(total - number(theorem["log p_θ(x) (exact)"])) < 2e-4, theorem
        assert abs(number(theorem["ELBO + KL - log p(x)"])) < 1e-6, theorem
        # the grid's quadrature of section 2 is the linear model's exact marginal
        assert abs(quad - number(theorem["log p_θ(x) (exact)"])) < 0.01, (quad, theorem)
    else:
        assert "ELBO (exact)" not in theorem
    ladder = estimates_shown(page, "truth_ladder")
    model_lp = next(v for k, v in ladder.items() if k.startswith("model's log p_θ(x)"))
    ladder_elbo = next(v for k, v in ladder.items() if k.startswith("ELBO"))
    assert model_lp > ladder_elbo
    assert abs(number(theorem["the encoder is wrong"]) - (model_lp - ladder_elbo)) < 0.011
    if kind in ("gmm2d", "linear"):  # a data set with its own exact density
        data_lp = ladder["the data's exact log p(x)"]
        assert abs(number(theorem["the model is wrong"]) - (data_lp - model_lp)) < 0.011
    else:
        assert "the model is wrong" not in theorem
    harness.assert_no_traceback(page)
    harness.screenshot(page, f"inside-elbo-{kind}")
