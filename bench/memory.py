"""Section 7: peak resident memory of the MNIST-sized run, against the size of its data.

The run is `python -m trainer fit` on a 75,000 x 784 float32 .npy file (the 80/20 split gives
60,000 training images), in its own process, one epoch. Its peak RSS is the kernel's
high-water mark of that process's memory (VmHWM in /proc/self/status, read just before it
exits; wait4's ru_maxrss would also count the RSS of this big parent process at fork time).
A process that only imports the trainer gives the fixed cost of Python and torch, so what
the run adds on top of it can be set against the data's bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .common import Context
from .data import save_npy
from .small import ROOT


# Runs `python -m trainer ARGS...` (or only the imports, with no ARGS) in this interpreter,
# then reports the process's peak resident memory on stderr.
_PROBE = """
import runpy, sys
code = 0
if len(sys.argv) > 1:
    sys.argv = ["trainer", *sys.argv[1:]]
    try:
        runpy.run_module("trainer", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code or 0
else:
    import torch, trainer.api
with open("/proc/self/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
print("VmHWM_kB", hwm, file=sys.stderr)
sys.exit(code)
"""


def _peak_rss(trainer_args: list[str], env: dict) -> tuple[int, float, str]:
    """(peak RSS bytes, wall seconds, stderr) of `python -m trainer ARGS` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _PROBE, *trainer_args], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    found = [line.split()[1] for line in p.stderr.splitlines() if line.startswith("VmHWM_kB")]
    if p.returncode != 0 or not found:
        raise RuntimeError(f"the memory run failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")
    return int(found[-1]) * 1024, wall, p.stderr


def section_7(ctx: Context) -> None:
    s = ctx.sizes
    path = ctx.workdir / f"blobs-{s.rss_n}.npy"
    data_bytes = save_npy(path, s.rss_n, seed=3)
    env = {**os.environ, "OMP_NUM_THREADS": str(ctx.threads)}
    base, _, _ = _peak_rss([], env)
    out = ctx.workdir / "rss-run"
    args = ["fit", "--data", str(path), "--out", str(out), "--latent-dim", str(s.latent_dim),
            "--hidden", ",".join(map(str, s.hidden)), "--likelihood", "bernoulli", "--epochs", "1",
            "--threads", str(ctx.threads), "--quiet"]
    peak, wall, _ = _peak_rss(args, env)
    train_bytes = data_bytes * 0.8
    ctx.sections["7_memory"] = {"rows": s.rss_n, "data_bytes": data_bytes, "peak_rss_bytes": peak,
                                "import_rss_bytes": base, "wall_s": wall,
                                "command": ["python", "-m", "trainer", *args]}
    ctx.row("7", f"peak RSS, fit on {s.rss_n:,} x 784 .npy (1 epoch)", peak / 2**20, "MiB", peak / data_bytes,
            f"data {data_bytes / 2**20:.0f} MiB",
            note=f"{(peak - base) / 2**20:.0f} MiB above the {base / 2**20:.0f} MiB of importing torch "
                 f"= {(peak - base) / data_bytes:.2f}x the data ({train_bytes / 2**20:.0f} MiB of it training)")
