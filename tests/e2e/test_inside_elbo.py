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

    # 1. the reparameterization: M = 10 draws by default, drawn and stated; both gradient
    # estimators drawn, the reparameterized one with the smaller variance
    cloud = {t["name"]: t for t in harness.plotly_traces(chart(page, "reparam_cloud"))}
    draws = next(t for name, t in cloud.items() if name.startswith("z = mu + sigma * eps"))
    assert draws["n"] == 10 and "10 draws" in draws["name"], cloud
    # ... drawn on the latent map: the test set's codes behind them (each run's test split)
    codes = next(t for name, t in cloud.items() if name.startswith("the latent map"))
    assert codes["n"] == int(codes["name"].split(" of ")[1].split()[0]) > 50, codes
    reparam = shown(harness.keyed(page, "section_reparam"))
    assert "estimate, M = 10" in reparam and number(reparam["standard error"]) > 0, reparam
    assert number(reparam["variance ratio, score function / reparameterized"]) > 1, reparam
    assert len(harness.plotly_traces(chart(page, "gradient_variance"))) == 2

    # 4. the linear example's landscape: for the linear run on linear-gaussian data, the three
    # contour maps with the run's (t, s) after each of its 20 epochs (and epoch 0); else a note
    if kind == "linear":
        land = harness.plotly_traces(chart(page, "elbo_landscape"))
        assert [t["type"] for t in land].count("contour") == 3
        path = [t for t in land if t["name"] == "this run, per epoch"]
        assert len(path) == 3 and path[0]["n"] == 21, path
        star = next(t for t in land if t["name"] == "t = 1, s = sigma")
        assert star["x"] == [1.0] and star["y"] == [0.5]  # linear-gaussian's default sigma
    else:
        page.get_by_text("it needs a run with the linear architecture").wait_for()

    # 5. where the KL goes: the split sums to the closed-form mean KL within its errors
    kl = shown(harness.keyed(page, "section_kl"))
    mi, mi_se = (float(v) for v in kl["I(x; z)"].split(" ± "))
    agg, agg_se = (float(v) for v in kl["KL(q(z) || p(z))"].split(" ± "))
    assert abs(mi + agg - number(kl["mean KL(q(z|x) || p(z))"])) < 4 * (mi_se**2 + agg_se**2) ** 0.5 + 0.01, kl
    hist = harness.plotly_traces(chart(page, "code_histograms"))
    assert [t["type"] for t in hist].count("bar") == 2  # d = 2: one histogram per dimension

    # 6. how many draws: every row states its draws and its ±
    table = harness.keyed(page, "section_draws").locator('[data-testid="stDataFrame"]')
    table.scroll_into_view_if_needed()  # the grid draws its table when it is on screen
    rows = harness.table_rows(table)
    assert [r["draws"] for r in rows][:3] == ["M = 1 (seed 0)", "M = 100", "M = 1000"], rows
    assert all(r["±"] for r in rows), rows
    harness.assert_no_traceback(page)
    harness.screenshot(page, f"inside-elbo-{kind}")


def test_moving_m_changes_the_estimate_and_its_error_bar(page, app, runs):
    open_view(page, app, "inside-elbo", "Inside the ELBO", run=runs["digits"])
    harness.wait_drawn(page)
    section = harness.keyed(page, "section_reparam")
    before = shown(section)
    slider = harness.keyed(page, "reparam_m").get_by_role("slider")
    slider.focus()
    for _ in range(3):  # 10 -> 20 -> 50 -> 100
        slider.press("ArrowRight")
    page.get_by_text("estimate, M = 100").wait_for()
    harness.wait_drawn(page)
    after = shown(section)
    assert after["estimate, M = 100"] != before["estimate, M = 10"]
    se10, se100 = number(before["standard error"]), number(after["standard error"])
    # 1/sqrt(10) = 0.32 times sd_100 / sd_10, the sample sds' ratio: sd_10 from 10 draws is itself
    # noisy (sd_10^2 / sd^2 ~ chi2_9 / 9, whose 0.1% quantile 0.15 allows a ratio up to 0.82)
    assert 0.1 < se100 / se10 < 0.85, (se10, se100)
    draws = [t for t in harness.plotly_traces(chart(page, "reparam_cloud")) if "draws)" in t["name"]]
    assert [t["n"] for t in draws] == [100], draws
    harness.assert_no_traceback(page)
