"""The app, run by Streamlit's AppTest: every view renders, URL state round-trips, errors
are one-line messages, and training starts in the background and can be cancelled."""

from __future__ import annotations


import numpy as np
import pytest

from explorer_helpers import assert_clean, interpolation_message, latent_map, plotly_specs

VIEWS = {"runs": "Runs", "train": "Train", "latent-map": "Latent map", "interpolate": "Interpolate",
         "elbo": "ELBO breakdown", "generate": "Generate"}


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_renders_a_trained_run(make_app, runs_dir, view):
    at = make_app(runs_dir, view=view).run()
    assert_clean(at)
    assert [t.value for t in at.title] == [VIEWS[view]]
    assert at.query_params["run"] == "digits-2d"
    assert at.query_params["view"] == view
    if view in ("latent-map", "interpolate", "elbo", "generate"):
        assert at.get("plotly_chart") or at.image, "an exploring view shows a figure"
    if view == "latent-map":
        _, _, (_, meta, arrays) = latent_map(at)
        assert arrays["xy"].shape == (359, 2)  # digits: 1797 samples, 20 % test split
        assert [item["label"] for item in meta["legend"]["items"]] == [f"digit {d}" for d in range(10)]


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_renders_an_empty_runs_folder(make_app, tmp_path, view):
    at = make_app(tmp_path / "empty", view=view).run()
    assert_clean(at)
    assert [t.value for t in at.title] == [VIEWS[view]]
    if view in ("latent-map", "interpolate", "elbo", "generate", "runs"):
        assert any("no" in i.value.lower() and "run" in i.value.lower() for i in at.info)
    assert not (tmp_path / "empty" / "digits-2d").exists(), "auto-start was off: nothing may be launched"


def test_a_link_reopens_the_same_interpolation(make_app, runs_dir):
    at = make_app(runs_dir, view="interpolate", run="digits-2d", a=3, b=17, t="0.25", path="slerp").run()
    assert_clean(at)
    assert at.number_input(key="endpoint_a").value == 3
    assert at.number_input(key="endpoint_b").value == 17
    header, _ = interpolation_message(at)
    assert header["t0"] == pytest.approx(0.25) and header["method"] == "slerp"  # where the page's slider starts
    assert at.radio(key="interp_path").value == "slerp"
    qp = at.query_params
    assert (qp["a"], qp["b"], qp["t"], qp["path"], qp["view"]) == ("3", "17", "0.25", "slerp", "interpolate")
    assert "At t = 0.25" in [h.value for h in at.subheader]


def test_the_page_is_sent_every_step_of_the_path_once(make_app, runs_dir):
    at = make_app(runs_dir, view="interpolate", a=0, b=5, t="0").run()
    assert_clean(at)
    header, blobs = interpolation_message(at)
    assert header["steps"] >= 64 and blobs["frames"].shape[0] == header["steps"]
    assert not np.array_equal(blobs["frames"][0], blobs["frames"][-1])  # A and B decode differently
    assert header["map"]["a"] != header["map"]["b"]
    at.number_input(key="strip_n").set_value(5).run()  # a rerun that does not change the path
    assert interpolation_message(at)[0]["id"] == header["id"]
    at.radio(key="interp_path").set_value("slerp").run()
    assert at.query_params["path"] == "slerp"
    slerp_header, slerp_blobs = interpolation_message(at)
    assert slerp_header["method"] == "slerp" and slerp_header["id"] != header["id"]
    assert not np.allclose(slerp_blobs["path"], blobs["path"])
    # the path profile shows both paths: log p(z) and the decoded ELBO for lerp and slerp
    names = {tr["name"] for spec in plotly_specs(at) for tr in spec["data"]}
    assert {"lerp: log p(z)", "slerp: log p(z)", "lerp: ELBO", "slerp: ELBO"} <= names


def test_random_endpoints_and_the_strip(make_app, runs_dir):
    at = make_app(runs_dir, view="interpolate").run()
    at.button(key="random_endpoints").click().run()
    assert_clean(at)
    a, b = at.number_input(key="endpoint_a").value, at.number_input(key="endpoint_b").value
    assert a != b and at.query_params["a"] == str(a) and at.query_params["b"] == str(b)
    at.number_input(key="strip_n").set_value(5).run()
    assert len(at.image[0].captions[0].split(",")) == 5  # "t = 0.00, 0.25, ..." five steps


def test_choosing_a_sample_updates_the_breakdown(make_app, runs_dir):
    at = make_app(runs_dir, view="latent-map").run()
    at.number_input(key="sample_index").set_value(7).run()
    assert_clean(at)
    assert at.query_params["sample"] == "7"
    at = make_app(runs_dir, view="elbo", sample=7).run()
    assert_clean(at)
    assert at.number_input(key="elbo_sample_index").value == 7
    metrics = {m.label: float(m.value) for m in at.metric}
    assert metrics["ELBO"] == pytest.approx(metrics["recon"] + metrics["-KL"], abs=0.011)
    assert metrics["gap"] == pytest.approx(metrics["log p(x)"] - metrics["ELBO"], abs=0.011)
    waterfall = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "bar")
    assert waterfall["layout"]["yaxis"]["title"]["text"] == "nats per sample (higher is better)"


def test_latent_map_colour_and_overlays(make_app, runs_dir):
    at = make_app(runs_dir, view="latent-map").run()
    at.selectbox(key="color_by").set_value("KL").run()
    at.checkbox(key="show_manifold").check().run()
    at.checkbox(key="show_contours").check().run()
    assert_clean(at)
    view, (_, _, samples), (_, meta, _) = latent_map(at)
    assert view["contours"] and view["manifold"] and view["decode"]
    assert meta["legend"]["kind"] == "scale" and meta["legend"]["name"] == "KL"
    assert samples["manifold"].dtype == np.uint8 and samples["manifold"].ndim == 2  # the decoded grid, grey


def test_a_damaged_run_is_a_one_line_error(make_app, scratch_runs):
    (scratch_runs / "digits-2d" / "model.safetensors").write_bytes(b"not a safetensors file")
    for view in ("latent-map", "interpolate", "elbo", "generate"):
        at = make_app(scratch_runs, view=view).run()
        assert not at.exception
        assert len(at.error) == 1 and "\n" not in at.error[0].value
        assert "damaged" in at.error[0].value


def test_a_failed_run_shows_the_trainers_message(make_app, scratch_runs):
    from trainer.runs import write_status

    failed = scratch_runs / "broken"
    failed.mkdir()
    write_status(failed, "failed", message="the loss became non-finite at epoch 3: lower the learning rate")
    at = make_app(scratch_runs, view="latent-map", run="broken").run()
    assert not at.exception
    assert any("lower the learning rate" in e.value for e in at.error)
    at = make_app(scratch_runs, view="runs").run()
    assert any("broken failed" in e.value for e in at.error)


def test_delete_asks_for_confirmation(make_app, scratch_runs):
    at = make_app(scratch_runs, view="runs").run()
    at.selectbox(key="delete_name").set_value("digits-2d").run()
    at.button(key="delete_run").click().run()
    assert (scratch_runs / "digits-2d").exists()
    at.button(key="cancel_delete").click().run()
    assert (scratch_runs / "digits-2d").exists()
    at.button(key="delete_run").click().run()
    at.button(key="confirm_delete").click().run()
    assert_clean(at)
    assert not (scratch_runs / "digits-2d").exists()
    assert any("Deleted digits-2d" in s.value for s in at.success)


def test_a_bad_upload_is_refused_and_a_good_one_is_saved(make_app, tmp_path):
    root = tmp_path / "runs"
    at = make_app(root, view="train").run()
    at.file_uploader(key="upload_files").set_value(("data.npz", b"PK\x03\x04 this is not a zip", "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "data.npz" in at.error[0].value
    assert not (root / "uploads").exists() or not list((root / "uploads").iterdir())  # nothing kept

    import io

    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).random((50, 6)).astype(np.float32))
    at.file_uploader(key="upload_files").set_value(("points.npz", buf.getvalue(), "application/octet-stream")).run()
    assert_clean(at)
    assert any("50 samples of shape [6]" in s.value for s in at.success)
    saved = root / "uploads" / "points.npz"
    assert saved.exists()
    assert at.selectbox(key="train_data").value == str(saved)


def test_bad_settings_are_a_one_line_error(make_app, tmp_path):
    at = make_app(tmp_path / "runs", view="train").run()
    at.text_input(key="train_hidden").input("512,abc")
    at.button(key="train_submit").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "hidden sizes" in at.error[0].value
    assert not (tmp_path / "runs").exists() or not any(p.is_dir() and p.name != "uploads"
                                                       for p in (tmp_path / "runs").iterdir())


def test_the_train_form_offers_what_the_registries_hold(make_app, tmp_path):
    """The form's choices are the trainer's registries: a likelihood, an architecture or a
    built-in data set added there shows here with no change to the app."""
    from trainer.data import DATASETS
    from trainer.likelihoods import LIKELIHOODS
    from trainer.model import ARCHITECTURES

    at = make_app(tmp_path / "runs", view="train").run()
    assert not at.exception
    assert at.selectbox(key="train_likelihood").options == list(LIKELIHOODS)
    assert "continuous-bernoulli" in at.selectbox(key="train_likelihood").options
    assert at.selectbox(key="train_arch").options == list(ARCHITECTURES)
    assert at.selectbox(key="train_data").options[:len(DATASETS)] == [f"{n}: {b.help}" for n, b in DATASETS.items()]


def test_above_max_points_the_map_draws_a_stated_subsample(make_app, scratch_runs, monkeypatch):
    from explorer.services import inpage

    monkeypatch.setattr(inpage, "MAX_POINTS", 100)
    at = make_app(scratch_runs, view="latent-map").run()
    assert_clean(at)
    _, (_, smeta, samples), (_, meta, points) = latent_map(at)
    assert meta["shown"] == 100 and len(points["index"]) == 100 and meta["n"] == 359
    assert np.array_equal(samples["atlas_index"], points["index"])  # each drawn point has its thumbnail
    assert any("seeded subsample of 100 of the 359 test samples" in c.value for c in at.caption)
