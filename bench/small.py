"""Section 3: small data. The digits training pass against a plain eager PyTorch loop
(bench/eager.py) in the same run, 1 thread, the app's first-start model; one digits epoch with
the default config, through the same `trainer.fit` the command line runs (training pass, test
evaluation, metrics line, status and checkpoint writes); and the wall time of the app's
first-start training as the app starts it: `python -m trainer fit ...` in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainer import RunConfig, fit
from trainer.data import load_dataset

from .common import Context, matrix_weights, median, train_flop_per_sample, use_threads
from .eager import EagerLoop

ROOT = Path(__file__).resolve().parents[1]

# Asked of a fresh interpreter, so that importing the app (which sets torch's threads for
# itself) leaves this process alone: the first-start config and the command the app runs.
_APP_FIRST_START = """
import json, sys
from pathlib import Path
from explorer.services import jobs
from explorer.views.common import default_config
cfg = default_config()
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
jobs.write_job_config(out, cfg)  # the settings file the command trains (fit --config)
print(json.dumps({"config": cfg.to_dict(), "threads": jobs.train_threads(),
                  "command": jobs.fit_command(cfg, out, jobs.train_threads())}))
"""


def app_first_start(out: Path) -> dict | None:
    """The app's first-start training (config, threads, command line), or None when the app
    is not there to ask."""
    if not (ROOT / "explorer" / "views" / "common.py").exists():
        return None
    p = subprocess.run([sys.executable, "-c", _APP_FIRST_START, str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    if p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def digits_against_eager(ctx: Context, epochs: int) -> dict:
    """The digits training pass (the app's first-start model, 1 thread) of the trainer's fast
    step, of its autograd step and of the plain eager loop, one epoch of each in turn so that
    a slow moment of the machine hits all three; medians after a warm-up epoch. Then where
    the fast step's time goes (torch.profiler): the matrix products' share."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainer.train import Callbacks, Trainer

    use_threads(1)
    data = load_dataset("digits", 0)
    cfg = RunConfig(data="digits")
    cfg.train.device, cfg.train.epochs = "cpu", 0
    m = cfg.model
    trainers = {step: Trainer(cfg, data, torch.device("cpu"), step=step) for step in ("fast", "autograd")}
    eager = EagerLoop(data.x_train, m.hidden, m.latent_dim, m.likelihood, cfg.train.batch_size, cfg.train.lr)
    times: dict[str, list[float]] = {"fast": [], "autograd": [], "eager": []}
    # Also this thread's CPU time of each pass (time.thread_time): on cores that other
    # processes share, the wall time counts the moments this process waited, the CPU time not.
    cpu: dict[str, list[float]] = {"fast": [], "autograd": [], "eager": []}
    for _ in range(epochs + 1):
        for step, trainer in trainers.items():
            rows: list[dict] = []
            last_step_end: list[float] = []

            def on_step(step_number, epoch, i, n_batches):
                if i == n_batches - 1:
                    last_step_end.append(time.thread_time())

            trainer.cfg.train.epochs = trainer.epoch + 1
            c0 = time.thread_time()
            trainer.run(Callbacks(on_step=on_step, on_epoch=rows.append))
            times[step].append(rows[-1]["epoch_time_s"])
            cpu[step].append(last_step_end[-1] - c0)
        c0 = time.thread_time()
        times["eager"].append(eager.epoch())
        cpu["eager"].append(time.thread_time() - c0)
    ms = {k: median(v[1:]) * 1e3 for k, v in times.items()}
    # The ratio of each round (one epoch of each, back to back): its spread says how much of a
    # difference between two runs the machine's own noise can make.
    rounds = sorted(e / f for f, e in zip(times["fast"][1:], times["eager"][1:]))
    quartiles = [rounds[int(q * (len(rounds) - 1) + 0.5)] for q in (0.25, 0.5, 0.75)]
    cpu_ms = {k: median(v[1:]) * 1e3 for k, v in cpu.items()}
    # The fast step alone (no test evaluation), three epochs' worth of steps, profiled
    fast, B, n = trainers["fast"], cfg.train.batch_size, len(data.x_train)
    sums = [0.0] * 4
    batches = [idx for _ in range(3) for idx in torch.randperm(n).split(B)]
    noise = [torch.randn(1, len(idx), m.latent_dim) for idx in batches]
    steps = len(batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for idx, eps in zip(batches, noise):
            fast.fast_step_sums(idx, eps, 1.0, sums)
        wall = (time.perf_counter() - t0) * 1e3
    ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}  # ms
    matrix = sum(ops.get(k, 0.0) for k in ("aten::mm", "aten::addmm"))
    adam = ops.get("aten::_fused_adam_", 0.0)
    all_ops = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    # per step, ms (profiled: the profiler adds its own cost to every operator call)
    breakdown = {"matrix_products": matrix / steps, "adam_kernel": adam / steps,
                 "other_operators": (all_ops - matrix - adam) / steps, "outside_operators": (wall - all_ops) / steps,
                 "operator_calls": sum(e.count for e in prof.key_averages()) / steps}
    use_threads(ctx.threads)
    return {"epochs": epochs, "steps_per_epoch": steps // 3, "train_pass_ms": ms, "epoch_times_s": times,
            "ratio_eager_to_fast_quartiles": quartiles,
            "train_pass_cpu_ms": cpu_ms, "epoch_cpu_s": cpu,
            "profile_fast": {"steps": steps, "wall_ms_per_step": wall / steps, "matrix_share_of_wall": matrix / wall,
                             "matrix_ms_per_step": matrix / steps, "top_ops_ms": dict(top),
                             "breakdown_ms_per_step": breakdown}}


def section_3(ctx: Context) -> None:
    s = ctx.sizes
    against = digits_against_eager(ctx, s.digits_epochs)
    ms, prof = against["train_pass_ms"], against["profile_fast"]
    n_steps = against["steps_per_epoch"]
    ratio = ms["eager"] / ms["fast"]
    ctx.row("3", "digits training pass, trainer (fast step), 1 thread", ms["fast"], "ms", ratio,
            f"plain eager loop (bench/eager.py) {ms['eager']:.1f} ms, same run", ">= 2x", ratio >= 2,
            f"autograd step {ms['autograd']:.1f} ms ({ms['eager'] / ms['autograd']:.2f}x); per step of 128: fast "
            f"{ms['fast'] / n_steps:.2f} ms of which matrix products {prof['matrix_ms_per_step']:.2f} ms "
            f"({prof['matrix_share_of_wall']:.0%} of a profiled fast step), eager {ms['eager'] / n_steps:.2f} ms; "
            "the ratio of single rounds, quartiles: " + " / ".join(f"{q:.2f}x" for q in against["ratio_eager_to_fast_quartiles"]))
    cpu = against["train_pass_cpu_ms"]
    ctx.row("3", "digits training pass, CPU time (thread_time), fast step", cpu["fast"], "ms", cpu["eager"] / cpu["fast"],
            f"plain eager loop {cpu['eager']:.1f} ms CPU, same run", note=(
                f"autograd step {cpu['autograd']:.1f} ms CPU; the CPU time leaves out the waits that other "
                "processes on the same cores cause (the wall-time row above is the goal's)"))
    use_threads(ctx.threads)
    cfg = RunConfig(data="digits")  # the default config: mlp 256,128, 2-D latent, Gaussian, learned sigma_dec
    cfg.train.epochs, cfg.train.threads = s.digits_epochs, ctx.threads
    out = ctx.workdir / "digits-default"
    stamps: list[float] = []
    rows: list[dict] = []

    def on_epoch(row):
        stamps.append(time.perf_counter())
        rows.append(row)

    t0 = time.perf_counter()
    fit(cfg, out, on_epoch=on_epoch)
    fit_wall = time.perf_counter() - t0
    use_threads(ctx.threads)  # fit sets threads itself; keep ours as asked
    # One epoch = from one epoch's end to the next: training, test evaluation, the metrics
    # line and any checkpoint/status writes (the first epoch also warms up: left out).
    epoch_walls = [b - a for a, b in zip(stamps, stamps[1:])]
    train_pass = [r["epoch_time_s"] for r in rows[1:]] or [rows[0]["epoch_time_s"]]
    epoch_ms = median(epoch_walls) * 1e3 if epoch_walls else rows[0]["epoch_time_s"] * 1e3

    data = load_dataset("digits", 0)
    flop = train_flop_per_sample(matrix_weights(64, cfg.model.hidden, cfg.model.latent_dim))
    epoch_flop = flop * len(data.x_train) + flop / 3 * len(data.x_test)  # training + test forward pass
    peak = ctx.peak(ctx.threads)["flops"]
    floor_ms = epoch_flop / peak * 1e3  # the epoch's matrix work at 100% of the peak
    result = {"epochs": s.digits_epochs, "n_train": len(data.x_train), "n_test": len(data.x_test),
              "epoch_wall_ms": [w * 1e3 for w in epoch_walls], "train_pass_ms": [t * 1e3 for t in train_pass],
              "fit_wall_s": fit_wall, "epoch_matrix_flop": epoch_flop, "floor_ms_at_peak": floor_ms,
              "against_eager": against}
    ctx.row("3", f"digits epoch, default config, {ctx.threads} threads", epoch_ms, "ms", floor_ms / epoch_ms,
            "fraction of f32 matmul peak", "< 20 ms", epoch_ms < 20,
            f"training pass alone {median(train_pass) * 1e3:.1f} ms; the epoch's {epoch_flop / 1e9:.2f} GFLOP "
            f"take {floor_ms:.1f} ms at the peak")
    ctx.cache["digits_run"] = out

    # The app's first start: its own config and command, in a fresh process, timed to exit.
    first = ctx.workdir / "first-start"
    app = app_first_start(first)
    if app is not None:
        command = app["command"]
        epochs = app["config"]["train"]["epochs"]
        threads = app["threads"]
        where = "the app's first-start command (explorer.services.jobs.fit_command)"
    else:
        epochs, threads = (100 if not ctx.quick else 2), ctx.threads
        command = [sys.executable, "-m", "trainer", "fit", "--data", "digits", "--latent-dim", "2",
                   "--epochs", str(epochs), "--threads", str(threads), "--out", str(first), "--quiet"]
        where = "explorer/ not found: digits, 2-D latent, 100 epochs"
    if ctx.quick:  # tiny mode: same command, few epochs
        command = _with_epochs(command, 2)
        epochs = 2
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"first-start training failed: {p.stderr.strip()[-300:]}")
    result["first_start"] = {"command": command, "epochs": epochs, "threads": threads, "wall_s": wall,
                             "source": where}
    ctx.row("3", f"app first-start training, {epochs} epochs, {threads} threads", wall, "s", None, "",
            note=f"wall time of a fresh `python -m trainer fit` ({where})")
    ctx.sections["3_small"] = result


def _with_epochs(command: list[str], epochs: int) -> list[str]:
    command = list(command)
    if "--epochs" in command:
        command[command.index("--epochs") + 1] = str(epochs)
    else:
        command += ["--epochs", str(epochs)]
    return command
