"""The app's Train form offers the number of processes: its job runs `python -m trainer fit
--nproc N` (torchrun), and the app's Cancel stops every process."""

from __future__ import annotations

import json
import time

import pytest

from explorer.services import jobs
from explorer.views.train import config_from_form
from trainer import RunConfig, load_run


def form(**changes) -> dict:
    v = dict(data="gmm2d", options="n=600", arch="mlp", hidden="16", latent_dim=2, likelihood="gaussian",
             sigma_mode="learned", sigma_value=0.1, beta=1.0, kl_warmup=0, mc_samples=1, epochs=2,
             batch_size=64, lr=1e-3, seed=0, processes=1)
    return {**v, **changes}


def test_the_form_s_processes_reach_the_command_line():
    from trainer.__main__ import build_parser

    assert config_from_form(form()).train.world_size == 1
    cfg = config_from_form(form(processes=2))
    assert cfg.train.world_size == 2
    cmd = jobs.fit_command(cfg, "/tmp/x", threads=4)
    a = build_parser().parse_args(cmd[3:])
    assert (a.nproc, a.threads) == (2, 2)  # the threads are shared out between the processes
    assert "--nproc" not in jobs.fit_command(config_from_form(form()), "/tmp/x", threads=4)


@pytest.mark.slow
def test_a_two_process_job_trains_and_cancel_stops_it(tmp_path):
    cfg = RunConfig.from_dict({**config_from_form(form(processes=2, epochs=1000)).to_dict()})
    run_dir = jobs.start(tmp_path, "two", cfg, threads=2)
    try:
        deadline = time.monotonic() + 240
        js = jobs.job_state(run_dir)
        while (js is None or js.epoch < 1) and time.monotonic() < deadline:  # an epoch saved
            time.sleep(0.1)
            js = jobs.job_state(run_dir)
        assert js.state == "running" and js.epoch >= 1, js
        assert js.pid != jobs.read_job(run_dir)["pid"]  # status names rank 0, not the launcher
        js = jobs.cancel(run_dir, wait_s=60)
    finally:
        js_now = jobs.job_state(run_dir)
        if js_now is not None and js_now.active:
            jobs.cancel(run_dir, wait_s=1)
    assert js.state == "cancelled", js
    launcher = jobs.read_job(run_dir)["pid"]
    deadline = time.monotonic() + 60
    while jobs.pid_alive(launcher) and time.monotonic() < deadline:  # torchrun collects its workers
        time.sleep(0.1)
    assert not jobs.pid_alive(launcher)
    assert json.loads((run_dir / "config.json").read_text())["train"]["world_size"] == 2
    run = load_run(run_dir)
    assert len(run.metrics) == js.epoch
