"""Sections 1, 2 and 4: training speed against pythae, against the CPU's float32 limit, and as
the data, the epochs, the threads and the processes grow.

Our side is trainer.train.Trainer, the loop `python -m trainer fit` runs (its fast step,
trainer/fastpath.py, for this MLP); its `epoch_time_s`
covers the training pass only (the per-epoch test evaluation is timed apart), as pythae's
`train_step` does. The two are run in the same process on the same tensors, one epoch each in
turn, so a slow moment of the machine hits both; the first epoch of each is warm-up and the
figure is the median of the others. A plain eager PyTorch loop (bench/eager.py) runs beside
them, one epoch each turn, as a baseline that needs no peer installed.
"""

from __future__ import annotations

import contextlib
import time

import torch

from trainer.data import Dataset
from trainer.elbo import evaluate
from trainer.train import Callbacks, Trainer

from . import peer
from .eager import EagerLoop
from .common import Context, matrix_weights, median, train_flop_per_sample, use_threads
from .cpu import matmul_peak


def _rate(n: int, times: list[float]) -> float:
    """Samples/s from per-epoch times, leaving out the first (warm-up) epoch when there are more."""
    timed = times[1:] if len(times) > 1 else times
    return n / median(timed)


def _extend(trainer: Trainer, epochs: int, rows: list[dict]) -> None:
    """Train `trainer` on to `epochs` epochs in all, appending each epoch's metrics row."""
    trainer.cfg.train.epochs = epochs
    trainer.run(Callbacks(on_epoch=rows.append))


def section_1_2(ctx: Context) -> None:
    """Throughput of ours and the peer at ctx.threads and at 1 thread, each as a fraction of
    the float32 matmul peak measured just before, at the same thread count."""
    s = ctx.sizes
    data = ctx.blobs()
    n = len(data.x_train)
    weights = matrix_weights(data.x_train[0].numel(), s.hidden, s.latent_dim)
    flop = train_flop_per_sample(weights)
    peer_version = peer.available()
    result = {"n_train": n, "n_test": len(data.x_test), "epochs": s.epochs, "matrix_weights": weights,
              "flop_per_sample": flop, "peer": f"pythae {peer_version}" if peer_version else None,
              "peer_flush_denormal": False, "by_threads": {}}
    thread_counts = [ctx.threads] + ([1] if ctx.threads != 1 else [])
    for threads in thread_counts:
        peak = ctx.peak(threads)
        use_threads(threads)
        ours = Trainer(ctx.mnist_config(epochs=0), data, torch.device("cpu"))
        rows: list[dict] = []
        peer_trainer, peer_times, peer_losses = None, [], []
        eager, eager_times = EagerLoop(data.x_train, list(s.hidden), s.latent_dim, "bernoulli", s.batch_size, s.lr), []
        if peer_version:
            torch.manual_seed(0)
            peer_trainer = peer.PeerTrainer(peer.build(tuple(data.shape), list(s.hidden), s.latent_dim),
                                            data.x_train, s.batch_size, s.lr, seed=0)
        for epoch in range(1, s.epochs + 1):
            use_threads(threads)  # ours flushes denormals to zero (trainer.train.set_threads)
            _extend(ours, epoch, rows)
            if peer_trainer is not None:
                torch.set_flush_denormal(False)  # pythae as shipped: it does not flush them
                t = time.perf_counter()
                peer_losses.append(peer_trainer.epoch())
                peer_times.append(time.perf_counter() - t)
            use_threads(threads)
            eager_times.append(eager.epoch())  # the plain eager loop (bench/eager.py), same data and model
        use_threads(threads)
        if peer_trainer is not None:
            peer_trainer.close()
        ours_times = [r["epoch_time_s"] for r in rows]
        ours_rate = _rate(n, ours_times)
        entry = {
            "matmul_peak_flops": peak["flops"], "matmul_peak_size": peak["size"],
            "ours_epoch_s": ours_times, "ours_samples_per_s": ours_rate,
            "ours_fraction_of_peak": ours_rate * flop / peak["flops"],
            "ours_train_elbo": [r["train_elbo"] for r in rows], "ours_test_elbo": [r["test_elbo"] for r in rows],
            "eager_epoch_s": eager_times, "eager_samples_per_s": _rate(n, eager_times),
            "ratio_ours_to_eager": ours_rate / _rate(n, eager_times),
        }
        if peer_trainer is not None:
            peer_rate = _rate(n, peer_times)
            entry.update({"peer_epoch_s": peer_times, "peer_samples_per_s": peer_rate,
                          "peer_fraction_of_peak": peer_rate * flop / peak["flops"],
                          "peer_train_elbo": [-loss for loss in peer_losses],
                          "ratio_ours_to_peer": ours_rate / peer_rate})
        result["by_threads"][str(threads)] = entry
        tag = f"{threads} thread{'s' if threads > 1 else ''}"
        if peer_trainer is not None:
            ratio = ours_rate / peer_rate
            ctx.row("1", f"train, ours, {tag}", ours_rate, "samples/s", ratio, "pythae, same run",
                    ">= 2x", ratio >= 2)
            ctx.row("1", f"train, pythae 0.1.2, {tag}", peer_rate, "samples/s")
            # Both do the same matrix products, so no trainer can beat pythae by more than the
            # peak's multiple of pythae's FLOP rate: the bound below which the goal must lie.
            needed = 2 * entry["peer_fraction_of_peak"]  # of the peak, for 2x pythae
            entry["ratio_bound_at_peak"] = 1 / entry["peer_fraction_of_peak"]
            ctx.row("1", f"bound: the matmul peak / pythae's FLOP rate, {tag}", 1 / entry["peer_fraction_of_peak"], "x",
                    note=f"2x pythae needs {needed:.0%} of the f32 matmul peak for the whole step; ours runs at "
                         f"{entry['ours_fraction_of_peak']:.0%}" + ("; beyond the peak, so the 2x goal cannot be met "
                                                                   "on this machine" if needed > 1 else ""))
        else:
            ctx.row("1", f"train, ours, {tag}", ours_rate, "samples/s", None, "", ">= 2x pythae", None,
                    "pythae not installed: pip install -r requirements-bench.txt")
        eager_rate = entry["eager_samples_per_s"]
        ctx.row("1", f"train, ours against the plain eager loop, {tag}", ours_rate, "samples/s", ours_rate / eager_rate,
                f"bench/eager.py {eager_rate:,.0f} samples/s, same run")
        frac = ours_rate * flop / peak["flops"]
        ctx.row("2", f"matrix FLOP/s, ours, {tag}", ours_rate * flop / 1e9, "GFLOP/s", frac,
                f"f32 matmul peak {peak['flops'] / 1e9:.0f} GFLOP/s", ">= 60%", frac >= 0.6)
        if peer_trainer is not None:
            ctx.row("2", f"matrix FLOP/s, pythae, {tag}", peer_rate * flop / 1e9, "GFLOP/s",
                    peer_rate * flop / peak["flops"], "f32 matmul peak")
        if threads == ctx.threads:
            ctx.cache["ours_main"] = (ours, rows)  # section 4 trains it on; section 5 encodes with it
    # Where the time goes (torch.profiler), for ours and the peer. Both compute the same matrix
    # products, so the peer's share of them bounds how much faster than it anyone can be.
    result["profile"] = {"ours": profile_epoch(ctx, ctx.threads)}
    if peer_version:
        result["profile"]["pythae"] = profile_epoch(ctx, ctx.threads, peer_side=True)
    for side, prof in result["profile"].items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["share_of_wall"].items())
        ctx.row("2", f"profile, {side}, {ctx.threads} threads", prof["share_of_wall"]["matrix products"],
                "of wall", note=f"share of an epoch's wall time: {shares}")
    if peer_version:
        bound = 1 / result["profile"]["pythae"]["share_of_wall"]["matrix products"]
        result["ratio_bound_same_products"] = bound
        ctx.row("1", f"bound: pythae time / its matrix products, {ctx.threads} threads", bound, "x", note=
                "the most any trainer doing the same matrix products at pythae's speed could gain over it")
    by = result["by_threads"]
    if "1" in by and str(ctx.threads) in by and ctx.threads != 1:
        speedup = by[str(ctx.threads)]["ours_samples_per_s"] / by["1"]["ours_samples_per_s"]
        result["ours_thread_speedup"] = speedup
        ctx.row("4", f"threads 1 -> {ctx.threads}, ours", speedup, "x", speedup / ctx.threads,
                f"ideal {ctx.threads}x", note="ratio = speed-up / thread count")
    ctx.sections["1_2_throughput"] = result


# torch.profiler operator names -> what they are in the training step
_KINDS = (("matrix products", ("aten::mm", "aten::addmm", "aten::bmm")),
          ("Adam", ("aten::_fused_adam_", "aten::_foreach_add_", "Optimizer.step#Adam.step",
                    "Optimizer.zero_grad#Adam.zero_grad")),
          ("Bernoulli log-likelihood", ("aten::log_sigmoid_forward", "aten::log_sigmoid_backward", "aten::sigmoid",
                                        "aten::binary_cross_entropy_with_logits")),
          ("ReLU", ("aten::clamp_min", "aten::threshold_backward", "aten::relu")),
          ("batch gather", ("aten::index_select",)))


def profile_epoch(ctx: Context, threads: int, peer_side: bool = False, batches: int = 40) -> dict:
    """torch.profiler over one training epoch of `batches` steps (after a warm-up epoch) of
    ours or of pythae: each kind of work's share of the epoch's wall time, and the ten
    costliest operators. An operator's time is measured on the thread that calls it, so
    shares of wall time stay meaningful with several threads."""
    from torch.profiler import ProfilerActivity, profile

    s = ctx.sizes
    full = ctx.blobs()
    x = full.x_train[:batches * s.batch_size]
    use_threads(threads)
    if peer_side:
        torch.manual_seed(0)
        runner = peer.PeerTrainer(peer.build(tuple(full.shape), list(s.hidden), s.latent_dim), x, s.batch_size, s.lr)
        torch.set_flush_denormal(False)
        runner.epoch()
        epoch = runner.epoch
    else:
        trainer = Trainer(ctx.mnist_config(epochs=1), Dataset("blobs", x, full.x_test[:256], is_image=True),
                          torch.device("cpu"))
        trainer.run()

        def epoch():
            trainer.cfg.train.epochs += 1
            trainer.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        epoch()
        wall = time.perf_counter() - t0
    if peer_side:
        runner.close()
        use_threads(threads)
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}  # seconds
    share = {kind: sum(ops.get(name, 0.0) for name in names) / wall for kind, names in _KINDS}
    share["everything else"] = max(0.0, 1.0 - sum(share.values()))
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
    return {"side": "pythae" if peer_side else "ours", "threads": threads, "batches": batches,
            "epoch_wall_s": wall, "share_of_wall": share, "top_ops_share_of_wall": {k: t / wall for k, t in top}}


@contextlib.contextmanager
def _autocast_forward():
    """Run the trainer's forward passes (trainer.train.elbo_terms) under bfloat16 autocast,
    one autocast region per call, as the AMP recipe does: the backward pass and Adam stay
    outside it. (One region around the whole loop would be wrong: autocast caches its bf16
    copies of the weights until the region ends, so every step would see the first weights.)"""
    import trainer.train as train_module

    plain = train_module.elbo_terms

    def elbo_terms_bf16(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return plain(*args, **kwargs)

    train_module.elbo_terms = elbo_terms_bf16
    try:
        yield
    finally:
        train_module.elbo_terms = plain


def section_2_bf16(ctx: Context) -> None:
    """bfloat16 autocast (AMX where the CPU has it) against float32: throughput, and the change
    in held-out ELBO it costs, beside the ELBO spread between two float32 seeds."""
    s = ctx.sizes
    full = ctx.blobs()
    data = Dataset("blobs", full.x_train[:s.bf16_n], full.x_test[:min(len(full.x_test), 2000)], is_image=True)
    use_threads(ctx.threads)
    bf16_peak = matmul_peak(ctx.threads, sizes=(min(s.peak_sizes),), seconds=s.peak_seconds, dtype=torch.bfloat16)
    runs = {}
    for name, seed, autocast in (("float32", 0, False), ("bfloat16", 0, True), ("float32_seed1", 1, False)):
        # the autograd step in all three (the autocast region wraps its elbo_terms)
        trainer = Trainer(ctx.mnist_config(epochs=s.bf16_epochs, seed=seed), data, torch.device("cpu"), step="autograd")
        rows: list[dict] = []
        if autocast:
            with _autocast_forward():
                trainer.run(Callbacks(on_epoch=rows.append))
        else:
            trainer.run(Callbacks(on_epoch=rows.append))
        held_out = evaluate(trainer.model, data.x_test, 1, seed=123).means()["elbo"]  # float32, fixed eps
        runs[name] = {"samples_per_s": _rate(len(data.x_train), [r["epoch_time_s"] for r in rows]),
                      "test_elbo": held_out}
    speed = runs["bfloat16"]["samples_per_s"] / runs["float32"]["samples_per_s"]
    change = runs["bfloat16"]["test_elbo"] - runs["float32"]["test_elbo"]
    seed_spread = abs(runs["float32_seed1"]["test_elbo"] - runs["float32"]["test_elbo"])
    ctx.sections["2_bf16"] = {"n_train": len(data.x_train), "epochs": s.bf16_epochs, "runs": runs,
                              "bf16_matmul_peak_flops": bf16_peak["flops"], "speedup": speed,
                              "test_elbo_change": change, "float32_seed_spread": seed_spread}
    ctx.row("2", f"bf16 autocast train, {ctx.threads} threads", runs["bfloat16"]["samples_per_s"], "samples/s",
            speed, "float32, same run", note=f"bf16 matmul peak {bf16_peak['flops'] / 1e9:.0f} GFLOP/s")
    ctx.row("2", "bf16 held-out ELBO change", change, "nats", None, "",
            note=f"float32 seed-to-seed spread {seed_spread:.2f} nats")


def section_4(ctx: Context) -> None:
    """Epoch time as the data grows (linear?) and as training goes on (flat?)."""
    s = ctx.sizes
    use_threads(ctx.threads)
    full = ctx.blobs()
    x_test = full.x_test[:min(len(full.x_test), 1000)]
    from .data import blobs

    per_sample = {}
    for n in s.scaling:
        x = full.x_train[:n] if n <= len(full.x_train) else blobs(n, seed=1)
        trainer = Trainer(ctx.mnist_config(epochs=2), Dataset("blobs", x, x_test, is_image=True),
                          torch.device("cpu"))
        rows: list[dict] = []
        trainer.run(Callbacks(on_epoch=rows.append))
        per_sample[n] = rows[-1]["epoch_time_s"] / n  # the second epoch: the first is warm-up
        del trainer, x
    ref_n = min(s.scaling, key=lambda n: abs(n - 60_000))
    for n in s.scaling:
        ratio = per_sample[n] / per_sample[ref_n]
        ctx.row("4", f"epoch, {n:,} samples, {ctx.threads} threads", per_sample[n] * n, "s", ratio,
                f"per-sample time at {ref_n:,}", "linear", note="ratio 1.0 = exactly linear")
    result = {"threads": ctx.threads, "epoch_s": {str(n): per_sample[n] * n for n in s.scaling}}

    if "ours_main" in ctx.cache:  # the same model trained on: are later epochs as fast?
        trainer, rows = ctx.cache["ours_main"]
        use_threads(ctx.threads)
        _extend(trainer, max(s.flat_epochs, len(rows)), rows)
        times = [r["epoch_time_s"] for r in rows]
        later = times[-1] / times[1] if len(times) > 1 else 1.0
        result["flat_epoch_s"] = times
        ctx.row("4", f"epoch {len(times)} vs epoch 2, {len(full.x_train):,} samples", times[-1], "s", later,
                "epoch 2, same run", "flat", note="epoch times " + ", ".join(f"{t:.2f}" for t in times))
    # Processes instead of threads: the distributed trainer's own benchmark (bench/distributed.py),
    # real `python -m trainer fit` runs of 1 and 2 processes on one generated .npy file.
    try:
        from .distributed import bench_distributed
    except ImportError:
        bench_distributed = None
    if bench_distributed is not None and ctx.quick:  # four more process launches: not in tiny mode
        ctx.row("4", "fit, 1 vs 2 processes", None, "samples/s", note="left out with --quick")
    elif bench_distributed is not None:
        dist = bench_distributed(n=s.dist_n, epochs=s.dist_epochs, hidden=",".join(map(str, s.hidden)),
                                 batch_size=s.batch_size, workdir=ctx.workdir)
        result["processes"] = dist
        for name, r in dist["runs"].items():
            ctx.row("4", f"fit, {name}, {dist['setup']['train_n']:,} samples", r["samples_per_s"], "samples/s",
                    r["ratio_vs_1x1"], "1 process x 1 thread, same run")
    ctx.sections["4_scaling"] = result
