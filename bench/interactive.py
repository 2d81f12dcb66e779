"""Section 5: the paths the app runs while a user waits. Run at the app's own thread count
(explorer/services/runs.py: 1 thread unless $VAE_APP_THREADS says otherwise).

- decode one image and a 16-image strip: `Run.decode`, what the Interpolate page calls, on
  the digits run of section 3 (p50/p95 over many calls);
- encode a 10k test set with the MNIST-sized model of section 1;
- PCA (scikit-learn) of 70,000 codes, t-SNE (scikit-learn) of 2,000 codes;
- the IWAE log p(x) estimate with K = 1000 on 1,000 digits, `trainer.elbo.log_px`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from trainer import load_run
from trainer.data import load_dataset
from trainer.elbo import log_px
from trainer.train import Trainer

from .common import Context, best_time, encode_mu, percentile, time_calls, use_threads


def app_threads() -> int:
    return max(1, int(os.environ.get("VAE_APP_THREADS", "1") or 1))


def _mnist_model(ctx: Context):
    """The MNIST-sized model of section 1 (or a freshly initialised one of the same sizes)."""
    if "ours_main" in ctx.cache:
        return ctx.cache["ours_main"][0].model
    return Trainer(ctx.mnist_config(epochs=0), ctx.blobs(), torch.device("cpu")).model


def section_5(ctx: Context) -> None:
    s = ctx.sizes
    threads = app_threads()
    use_threads(threads)
    result = {"threads": threads}
    tag = f"{threads} thread{'s' if threads > 1 else ''}"

    run_dir = ctx.cache.get("digits_run")
    if run_dir is None:  # section 3 was not run: train a short digits run here
        from trainer import RunConfig, fit

        cfg = RunConfig(data="digits")
        cfg.train.epochs, cfg.train.threads = 2, threads
        run_dir = ctx.workdir / "digits-interactive"
        fit(cfg, run_dir)
        use_threads(threads)
    run = load_run(run_dir)
    d = run.model.latent_dim
    gen = np.random.default_rng(0)
    points = gen.standard_normal((s.calls + 3, d)).astype(np.float32)
    it = iter(range(10**9))

    def decode_one():
        run.decode(points[next(it) % len(points)][None])  # (1, d) -> (1, *shape)

    def decode_strip():
        i = next(it) % len(points)
        a, b = points[i], points[(i + 1) % len(points)]
        t = np.linspace(0, 1, 16, dtype=np.float32)[:, None]
        run.decode((1 - t) * a + t * b)  # 16 images along the straight line from a to b

    for name, fn, target in (("decode 1 image", decode_one, 1.0), ("decode 16-image strip", decode_strip, 5.0)):
        times = [t * 1e3 for t in time_calls(fn, s.calls)]
        p50, p95 = percentile(times, 50), percentile(times, 95)
        result[name] = {"p50_ms": p50, "p95_ms": p95, "calls": s.calls}
        ctx.row("5", f"{name} (digits run), p50, {tag}", p50, "ms")
        ctx.row("5", f"{name} (digits run), p95, {tag}", p95, "ms", None, "", f"< {target:g} ms", p95 < target)

    model = _mnist_model(ctx)
    model.eval()
    full = ctx.blobs()
    x = full.x_test[:s.encode_n] if len(full.x_test) >= s.encode_n else full.x_train[:s.encode_n]
    with torch.inference_mode():
        t = best_time(lambda: model.encode(x))
    result["encode"] = {"n": len(x), "s": t}
    ctx.row("5", f"encode {len(x):,} images (784-d model), {tag}", t * 1e3, "ms")

    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x_all = torch.cat([full.x_train, full.x_test])
    if len(x_all) < s.pca_n:
        from .data import blobs

        x_all = torch.cat([x_all, blobs(s.pca_n - len(x_all), seed=2)])
    codes = encode_mu(model, x_all[:s.pca_n]).numpy()  # (pca_n, d)
    t = best_time(lambda: PCA(n_components=2).fit_transform(codes))
    result["pca"] = {"n": len(codes), "d": codes.shape[1], "s": t}
    ctx.row("5", f"PCA of {len(codes):,} codes (d={codes.shape[1]}), {tag}", t * 1e3, "ms", None, "",
            "< 50 ms", t * 1e3 < 50)
    sub = codes[:s.tsne_n]
    t0 = time.perf_counter()
    TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30.0, (len(sub) - 1) / 3)).fit_transform(sub)
    t = time.perf_counter() - t0
    result["tsne"] = {"n": len(sub), "s": t}
    ctx.row("5", f"t-SNE of {len(sub):,} codes, {tag}", t, "s")

    digits = load_dataset("digits", 0)
    xd = torch.cat([digits.x_test, digits.x_train])[:s.iwae_n]
    use_threads(threads)
    t0 = time.perf_counter()
    with torch.inference_mode():
        estimate = log_px(run.model, xd, s.iwae_k, torch.Generator().manual_seed(0))
    t = time.perf_counter() - t0
    result["iwae"] = {"n": len(xd), "k": s.iwae_k, "s": t, "mean_log_px": float(estimate.mean())}
    ctx.row("5", f"IWAE log p(x), K={s.iwae_k}, {len(xd):,} digits, {tag}", t, "s")
    ctx.sections["5_interactive"] = result
