"""The machine under the benchmarks: what it is, whether it is quiet, and its float32 limit.

Absolute times mean little on a shared machine, so every speed figure in the suite is also a
ratio against a baseline measured in the same run. Even ratios go wrong when other processes
load the cores (a 2-thread run on an oversubscribed CPU can be many times slower and nothing
in its output shows it), so the suite measures the CPU's busy time from /proc/stat before it
starts and between sections.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch


@dataclass
class CpuLoad:
    busy_cores: float  # cores' worth of CPU time used by other processes over the window (0..cores)
    cores: int  # logical CPUs counted in /proc/stat
    window_s: float  # length of the measurement
    top: list[tuple[int, float, str]]  # (pid, cores used, command) of the busiest other processes

    def describe(self) -> str:
        busiest = ", ".join(f"pid {pid} {cmd[:50]!r} {c:.2f}" for pid, c, cmd in self.top[:3]) or "none found"
        return (f"{self.busy_cores:.2f} of {self.cores} cores busy over {self.window_s:.1f} s "
                f"(busiest other processes, cores: {busiest})")


def _cpu_times() -> tuple[int, int, int]:
    """(total, idle, cores) jiffies of all CPUs from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    values = [int(v) for v in lines[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return sum(values[:8]), idle, cores  # guest time is already inside user time


def _process_jiffies() -> dict[int, tuple[int, str]]:
    """pid -> (utime + stime jiffies, command line) of every readable process but this one."""
    out = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip() or stat.split()[1]
            out[int(name)] = (int(fields[11]) + int(fields[12]), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def measure_load(window_s: float = 1.0) -> CpuLoad:
    """CPU time used by every other process on the machine over `window_s` seconds, while
    this one sleeps; also names the processes that used it."""
    hz = os.sysconf("SC_CLK_TCK")
    procs0 = _process_jiffies()
    own0 = sum(os.times()[:2])  # this process's CPU seconds (its idle worker threads may spin)
    total0, idle0, cores = _cpu_times()
    t0 = time.monotonic()
    time.sleep(window_s)
    total1, idle1, _ = _cpu_times()
    elapsed = time.monotonic() - t0
    own = sum(os.times()[:2]) - own0
    procs1 = _process_jiffies()
    total = max(1, total1 - total0)
    busy = (total - (idle1 - idle0)) / total * cores - own / elapsed
    top = []
    for pid, (j1, cmd) in procs1.items():
        if pid in procs0:
            used = (j1 - procs0[pid][0]) / hz / elapsed
            if used > 0.02:
                top.append((pid, used, cmd))
    top.sort(key=lambda t: -t[1])
    return CpuLoad(busy_cores=max(0.0, busy), cores=cores, window_s=elapsed, top=top)


def machine() -> dict:
    """What the results were measured on."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {
        "cpu": model, "cores": os.cpu_count(), "simd": simd,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def matmul_peak(threads: int, sizes: tuple[int, ...] = (1024, 2048), seconds: float = 0.5,
                dtype: torch.dtype = torch.float32) -> dict:
    """The best float32 (or bfloat16) square matrix-multiply rate, FLOP/s, at `threads`.

    The best of several timed repetitions per size, so a moment of interference is not
    counted; 2 n^3 FLOP per n x n product.
    """
    torch.set_num_threads(threads)
    best_rate, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)  # warm up (allocations, thread pool)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        once = max(time.perf_counter() - t, 1e-6)
        reps = max(1, int(seconds / 5 / once))  # about `seconds` in all for this size
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            rate = 2 * n**3 * reps / (time.perf_counter() - t)
            if rate > best_rate:
                best_rate, best_n = rate, n
            if once * reps > seconds:  # one product already takes longer than the budget
                break
    return {"flops": best_rate, "size": best_n, "threads": threads, "dtype": str(dtype).replace("torch.", "")}
