"""Samples per second of training with 1 and 2 processes (torch.distributed, gloo on CPU),
and from a .npy read in batches from disk (memory-mapped) beside the in-memory path.

    python -m bench.distributed            # MNIST-sized generated images, ~2 minutes on 2 cores
    python -m bench.distributed --quick    # tiny, seconds
    python -m bench.distributed --json out.json

Every configuration is a real `python -m trainer fit` run on the same data file, same
model and same global batch (the numbers trained are the same up to rounding; see
tests/distributed). Speed is the median samples/s of the epochs after the first (warm-up),
from the run's metrics.jsonl; ratios are against 1 process x 1 thread measured in the same
call. Rows:

  1 process  x 1 thread     the baseline
  1 process  x 2 threads    all cores to one process (intra-op threads)
  2 processes x 1 thread    all cores as two DDP ranks (gradient all-reduce each step)
  1 process, memory-mapped  the baseline reading batches from disk (page cache warm)

`bench_distributed(...)` returns the figures as a dict, for `python -m bench` to include.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [  # (name, processes, threads per process, data-spec suffix)
    ("1 process x 1 thread", 1, 1, ":mmap=0"),
    ("1 process x 2 threads", 1, 2, ":mmap=0"),
    ("2 processes x 1 thread", 2, 1, ":mmap=0"),
    ("1 process x 1 thread, memory-mapped", 1, 1, ":mmap=1"),
]


def _fit(data: str, out: Path, nproc: int, threads: int, epochs: int, hidden: str, batch_size: int) -> dict:
    """One `python -m trainer fit` run; its samples/s (median after the first epoch) and wall time."""
    cmd = [sys.executable, "-m", "trainer", "fit", "--data", data, "--out", str(out), "--hidden", hidden,
           "--latent-dim", "16", "--batch-size", str(batch_size), "--epochs", str(epochs),
           "--threads", str(threads), "--nproc", str(nproc), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r["samples_per_s"] for r in rows[1:] if r.get("samples_per_s")] or \
        [r["samples_per_s"] for r in rows if r.get("samples_per_s")]
    return {"samples_per_s": statistics.median(timed), "epochs_timed": len(timed), "wall_s": round(wall, 2),
            "final_test_elbo": rows[-1]["test_elbo"]}


def bench_distributed(n: int = 20_000, epochs: int = 3, hidden: str = "512,256", batch_size: int = 128,
                      workdir: str | Path | None = None) -> dict:
    """Train the same model on the same n generated 28x28 images in each configuration of
    CONFIGS; returns {"setup": ..., "runs": {name: {...samples_per_s, ratio_vs_1x1}}}."""
    sys.path.insert(0, str(ROOT))
    from bench.data import save_npy

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = Path(tmp) / "blobs.npy"
        nbytes = save_npy(data, n, seed=0)
        runs = {}
        for name, nproc, threads, suffix in CONFIGS:
            out = Path(tmp) / f"run-{len(runs)}"
            runs[name] = {"processes": nproc, "threads_per_process": threads,
                          **_fit(f"{data}{suffix}", out, nproc, threads, epochs, hidden, batch_size)}
    base = runs[CONFIGS[0][0]]["samples_per_s"]
    for r in runs.values():
        r["ratio_vs_1x1"] = round(r["samples_per_s"] / base, 3)
    return {"setup": {"n": n, "train_n": n - round(0.2 * n), "data_bytes": nbytes, "epochs": epochs,
                      "hidden": hidden, "latent_dim": 16, "batch_size": batch_size, "cpu_count": os.cpu_count()},
            "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    kwargs = dict(n=2_000, epochs=2, hidden="64") if a.quick else {}
    result = bench_distributed(**kwargs)
    s = result["setup"]
    print(f"training {s['train_n']:,} generated 28x28 images, mlp {s['hidden']}, batch {s['batch_size']}, "
          f"{s['epochs']} epochs (first is warm-up), {s['cpu_count']} cores")
    print(f"{'configuration':40s} {'samples/s':>12s} {'vs 1x1':>8s} {'wall s':>8s}")
    for name, r in result["runs"].items():
        print(f"{name:40s} {r['samples_per_s']:12,.0f} {r['ratio_vs_1x1']:8.2f} {r['wall_s']:8.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
