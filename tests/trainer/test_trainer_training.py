"""Training runs: reproducible, saved and loaded bit-exactly, resumable, actually learning;
the reported ELBO is the true one whatever the KL weight; a default digits run uses its
latent dimensions (vae-math.md, practical points)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer.conftest import small_config
from trainer import evaluate_run, fit, load_dataset, load_run
from trainer import checkpoints, fileio, runs
from trainer.train import Callbacks, Trainer, set_threads

TIMING_KEYS = {"epoch_time_s", "samples_per_s", "wall_time"}  # the only keys allowed to differ


def numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return checkpoints.load_model(run_dir).state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def cfg_small(epochs: int):
    """A few-second digits run that exercises the KL warm-up, M = 2 and a learned sigma_dec."""
    return small_config("digits", hidden=[64, 32], epochs=epochs, kl_warmup=3, mc_samples=2)


def test_same_seed_and_config_give_identical_metrics_and_weights(tmp_path):
    fit(cfg_small(2), tmp_path / "a")
    fit(cfg_small(2), tmp_path / "b")
    rows_a, rows_b = runs.read_metrics(tmp_path / "a"), runs.read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in rows_a] == [1, 2]
    assert numbers(rows_a) == numbers(rows_b)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    # and the evaluation of a run is reproducible too
    ev = [evaluate_run(load_run(tmp_path / d), k=20) for d in ("a", "b")]
    assert ev[0] == ev[1]


def test_another_seed_gives_other_numbers(tmp_path):
    fit(cfg_small(1), tmp_path / "a")
    other = cfg_small(1)
    other.train.seed = 1
    fit(other, tmp_path / "b")
    assert numbers(runs.read_metrics(tmp_path / "a")) != numbers(runs.read_metrics(tmp_path / "b"))


def test_resume_continues_where_it_stopped(tmp_path):
    """4 epochs in one go == 2 epochs, then --resume to 4: the same metrics, weights and
    optimizer state (the KL warm-up of 3 epochs crosses the break)."""
    fit(cfg_small(4), tmp_path / "straight")
    fit(cfg_small(2), tmp_path / "resumed")
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "resumed")] == [1, 2]
    assert fit(cfg_small(4), tmp_path / "resumed", resume=True) == "done"

    straight, resumed = runs.read_metrics(tmp_path / "straight"), runs.read_metrics(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert numbers(resumed) == numbers(straight)
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    optim = [checkpoints.load_safetensors(tmp_path / d / "optim.safetensors", "optim") for d in ("straight", "resumed")]
    assert_same_weights(optim[0], optim[1])
    assert runs.read_status_dead_as_failed(tmp_path / "resumed")["state"] == "done"


def test_resume_after_a_cancel_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    """Stopped (as by SIGTERM) in the middle of epoch 3: the run is `cancelled` with the
    checkpoint of epoch 2; resuming redoes epoch 3 from that checkpoint's random state."""
    import threading

    fit(cfg_small(4), tmp_path / "straight")
    stop = threading.Event()
    state = fit(cfg_small(4), tmp_path / "stopped", stop=stop,
                on_step=lambda step, epoch, i, n: stop.set() if step == 30 else None)  # 12 steps/epoch
    assert state == "cancelled"
    assert runs.read_status_dead_as_failed(tmp_path / "stopped")["state"] == "cancelled"
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "stopped")] == [1, 2]
    assert fit(cfg_small(4), tmp_path / "stopped", resume=True) == "done"
    assert numbers(runs.read_metrics(tmp_path / "stopped")) == numbers(runs.read_metrics(tmp_path / "straight"))
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))


def _replace_the_noise_generator_state(run_dir, state: torch.Tensor) -> None:
    """Put `state` in place of the saved noise generator state of optim.safetensors (the
    CPU's, as this machine trains), keeping every other tensor and the metadata."""
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    path = run_dir / "optim.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert tensors["rng.eps"].shape == (checkpoints.CPU_GENERATOR_STATE_BYTES,)
    tensors["rng.eps"] = state
    fileio.atomic_write_bytes(path, st_save(tensors, metadata=meta))


def test_a_run_saved_on_a_gpu_resumes_on_the_cpu_reproducibly(tmp_path):
    """A run whose noise generator was saved on CUDA resumes on the CPU: the Adam state and
    the shuffling continue, the noise restarts from a seed taken from the saved state, and
    the same checkpoint resumes to the same numbers."""
    import shutil

    fit(cfg_small(3), tmp_path / "straight")
    fit(cfg_small(2), tmp_path / "a")
    # what a CUDA generator saves (Philox: its seed and offset as two int64, 16 bytes)
    cuda_state = torch.tensor([12345, 4 * 24], dtype=torch.int64).view(torch.uint8)
    assert cuda_state.shape == (checkpoints.CUDA_GENERATOR_STATE_BYTES,)
    _replace_the_noise_generator_state(tmp_path / "a", cuda_state)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for d in ("a", "b"):
        assert fit(cfg_small(3), tmp_path / d, resume=True) == "done"
    rows_a, rows_b = (runs.read_metrics(tmp_path / d) for d in ("a", "b"))
    assert [r["epoch"] for r in rows_a] == [1, 2, 3]
    assert numbers(rows_a) == numbers(rows_b)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    # epochs 1-2 are the straight run's; epoch 3 draws other noise than its CPU stream...
    straight = runs.read_metrics(tmp_path / "straight")
    assert numbers(rows_a)[:2] == numbers(straight)[:2]
    assert rows_a[2]["train_elbo"] != straight[2]["train_elbo"]
    # ...while the training goes on where it was: the ELBO stays near the straight run's
    assert abs(rows_a[2]["test_elbo"] - straight[2]["test_elbo"]) < 0.05 * abs(straight[2]["test_elbo"])


def test_a_noise_generator_state_of_neither_device_is_refused(tmp_path):
    fit(cfg_small(1), tmp_path / "r")
    _replace_the_noise_generator_state(tmp_path / "r", torch.zeros(100, dtype=torch.uint8))
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    expected = rf"rng.eps has shape \[100\], expected \[{checkpoints.CPU_GENERATOR_STATE_BYTES}\] or \[16\]"
    with pytest.raises(runs.TrainerError, match=expected):
        fit(cfg_small(2), tmp_path / "r", resume=True)
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "status.json"} == \
        {k: v for k, v in before.items() if k != "status.json"}


def test_save_and_load_round_trip_bit_exactly(tmp_path):
    """Weights trained in memory, saved by save_checkpoint and read back by load_model (and
    load_run) are the same bits, and the loaded model computes the same numbers."""
    set_threads(1)
    cfg = small_config("digits", hidden=[32], latent_dim=3, epochs=1)
    data = load_dataset("digits", 0)
    trainer = Trainer(cfg, data)
    trainer.run()
    cfg.data_shape = list(data.shape)
    fileio.atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    checkpoints.save_checkpoint(tmp_path, trainer.model, trainer.state_tensors(), {"epoch": 1, "step": trainer.step})

    loaded = checkpoints.load_model(tmp_path)
    assert_same_weights(trainer.model.state_dict(), loaded.state_dict())
    x = data.x_test[:50]
    with torch.no_grad():
        q0, q1 = trainer.model.encode(x), loaded.encode(x)
        assert torch.equal(q0.mu, q1.mu) and torch.equal(q0.logvar, q1.logvar)
        z = torch.randn(5, 3)
        assert torch.equal(trainer.model.decode(z), loaded.decode(z))
    run = load_run(tmp_path)
    assert_same_weights(run.model.state_dict(), loaded.state_dict())
    assert run.config.to_dict() == cfg.to_dict()


def test_fit_saves_what_it_trained(tmp_path):
    """fit's run folder holds exactly the weights an in-memory Trainer reaches with the same
    config: the checkpoint is the trained model, bit for bit."""
    set_threads(1)
    cfg = small_config("digits", hidden=[32], epochs=2)
    fit(cfg, tmp_path / "run")
    trainer = Trainer(small_config("digits", hidden=[32], epochs=2), load_dataset("digits", 0))
    trainer.run()
    assert_same_weights(trainer.model.state_dict(), weights(tmp_path / "run"))


def test_a_training_step_changes_every_weight():
    set_threads(1)
    cfg = small_config("digits", hidden=[32], epochs=1)
    trainer = Trainer(cfg, load_dataset("digits", 0))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    assert trainer.run(Callbacks(should_stop=lambda: True)) == "cancelled"  # after one step
    assert trainer.step == 1
    after = dict(trainer.model.named_parameters())
    assert "log_sigma_dec" in after
    for name, value in before.items():
        assert not torch.equal(value, after[name].detach()), f"{name} did not change"


def test_the_reported_elbo_is_the_true_elbo_whatever_the_kl_weight(tmp_path):
    """With beta = 0.25 training maximises recon - 0.25 KL, logged as train_objective; the
    reported elbo stays recon - KL (beta = 1)."""
    fit(small_config("digits", hidden=[32], epochs=2, beta=0.25), tmp_path / "run")
    for row in runs.read_metrics(tmp_path / "run"):
        assert row["kl_weight"] == 0.25
        # (sums of float32 batch terms: equal to float32 precision)
        assert math.isclose(row["train_elbo"], row["train_recon"] - row["train_kl"], rel_tol=1e-6)
        assert math.isclose(row["train_objective"], row["train_recon"] - 0.25 * row["train_kl"], rel_tol=1e-6)
        assert row["train_objective"] - row["train_elbo"] > 0.5 * row["train_kl"]
        assert math.isclose(row["test_elbo"], row["test_recon"] - row["test_kl"], rel_tol=1e-6)


def test_kl_warmup_ramps_the_logged_weight(tmp_path):
    fit(small_config("digits", hidden=[16], epochs=3, kl_warmup=2, beta=1.0), tmp_path / "run")
    assert [r["kl_weight"] for r in runs.read_metrics(tmp_path / "run")] == [0.5, 1.0, 1.0]


def test_metrics_rows_hold_the_documented_keys(tmp_path):
    fit(small_config("digits", hidden=[16], epochs=1), tmp_path / "run")
    (row,) = runs.read_metrics(tmp_path / "run")
    for key in ("epoch", "step", "wall_time", "samples_per_s", "train_elbo", "train_recon", "train_kl",
                "train_objective", "test_elbo", "test_recon", "test_kl", "active_units", "sigma_dec"):
        assert key in row, key
    assert row["step"] == math.ceil(1438 / 128)  # digits: 1,797 images, 359 held out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == "digits" and config["data_shape"] == [1, 8, 8]
    assert {"python", "torch", "numpy"} <= set(config["versions"])


def test_default_digits_run_has_its_latent_dimensions_active(digits_run):
    """The default config (2-D latent, learned sigma_dec) after 10 epochs: both dimensions
    carry information (Burda's active units, and a clear KL per dimension)."""
    run = load_run(digits_run)
    assert run.config.model.latent_dim == 2 and run.config.model.sigma_dec == "learned"
    result = evaluate_run(run, k=10)
    assert result["active_units"] == 2
    assert min(result["kl_per_dim"]) > 0.3, result["kl_per_dim"]
    # a learned sigma_dec starts from the data (not 1): well below 1 on data in [0, 1]
    assert 0.05 < result["sigma_dec"] < 0.5


def test_a_decoder_too_broad_collapses_the_posterior(tmp_path):
    """The contrast that makes the test above meaningful (vae-math.md): sigma_dec held at 1
    on data in [0, 1] lets the KL term win; nothing is encoded."""
    fit(small_config("digits", sigma_dec=1.0, epochs=3), tmp_path / "run")
    result = evaluate_run(load_run(tmp_path / "run"), k=10)
    assert result["active_units"] == 0
    assert max(result["kl_per_dim"]) < 0.05


@pytest.mark.parametrize("arch,spec", [("mlp", "digits"), ("conv", "shapes:n=300,size=16"),
                                       ("linear", "gmm2d:n=300")])
def test_each_architecture_trains_and_improves(tmp_path, arch, spec):
    fit(small_config(spec, arch=arch, hidden=[32], conv_channels=[8, 16], epochs=3, lr=3e-3), tmp_path / "run")
    rows = runs.read_metrics(tmp_path / "run")
    assert rows[-1]["train_elbo"] > rows[0]["train_elbo"]
    run = load_run(tmp_path / "run")
    assert run.generate(4).shape == (4, *run.model.data_shape)


# -- where training starts (vae-math.md, practical points) -------------------------------------

def test_decoder_output_bias_starts_at_the_data_mean():
    from trainer.config import ModelConfig
    from trainer.model import build_model

    data = load_dataset("digits", 0)
    mean = data.x_train.mean(0)
    for arch, likelihood in (("mlp", "gaussian"), ("linear", "gaussian"), ("mlp", "bernoulli")):
        model = build_model(ModelConfig(arch=arch, hidden=[16], likelihood=likelihood), data.shape)
        model.init_from_data(data.x_train)
        bias = model.output_bias().detach().reshape(mean.shape)
        if likelihood == "bernoulli":
            bias = torch.sigmoid(bias)
            inside = (mean > 1e-3) & (mean < 1 - 1e-3)  # the logit is clamped at the edges
            torch.testing.assert_close(bias[inside], mean[inside], rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(bias, mean)


def test_learned_sigma_dec_starts_at_the_ppca_noise_level():
    """initial_sigma_dec^2 = mean variance outside the top-d principal directions: the same
    number as scikit-learn's PCA(d).noise_variance_ (which divides by N - 1, not N)."""
    from sklearn.decomposition import PCA

    from trainer.model import initial_sigma_dec

    x = load_dataset("digits", 0).x_train.reshape(-1, 64)
    n = len(x)
    for d in (2, 10):
        ours = initial_sigma_dec(x, d, max_rows=n)
        reference = math.sqrt(PCA(d).fit(x.double().numpy()).noise_variance_ * (n - 1) / n)
        assert math.isclose(ours, reference, rel_tol=1e-4), (d, ours, reference)
    # the default uses 1,024 of the 1,438 rows for the principal directions: close
    assert math.isclose(initial_sigma_dec(x, 2), initial_sigma_dec(x, 2, max_rows=n), rel_tol=0.05)
    # when d >= D there is no residual: a quarter of the RMS deviation from the mean
    g = load_dataset("gmm2d:n=2000", 0).x_train
    rms = float((g - g.mean(0)).pow(2).mean().sqrt())
    assert math.isclose(initial_sigma_dec(g, 2), 0.25 * rms, rel_tol=1e-5)
