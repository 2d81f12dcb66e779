"""python -m bench: the benchmark suite (issue 8). Prints a table, writes bench/results.json.

    python -m bench                  # everything, full sizes (under 15 minutes on 2 cores)
    python -m bench --quick          # tiny sizes, seconds (what the smoke test runs)
    python -m bench --sections 1,3   # some sections only
    python -m bench --force          # run even while other processes load the CPU (development)
    python -m bench --sections 6 --before f988f4b   # section 6 beside an older commit's pages

Sections: 1 training throughput vs pythae, 2 against the float32 matmul peak (and bfloat16),
3 small data (digits epoch, the app's first-start training), 4 scaling (data, threads,
epochs), 5 interactive paths, 6 in the browser, 7 peak memory, 8 quality beside pythae,
load a classroom: many sessions on one server (bench/load.py, issue 17).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .common import Context, Sizes, sizes_dict
from .cpu import machine, measure_load

HERE = Path(__file__).resolve().parent
SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "load")
EXIT_BUSY = 3  # refused: the CPU is loaded by other processes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: every section in seconds")
    p.add_argument("--force", action="store_true",
                   help="run even when other processes load the CPU (figures are then marked forced)")
    p.add_argument("--threads", type=int, default=0, help="threads of the main runs (default: all cores)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, e.g. 1,2,5")
    p.add_argument("--out", default=None, help="results file (default bench/results.json; "
                                                "bench/results-quick.json with --quick)")
    p.add_argument("--max-busy", type=float, default=0.15,
                   help="most cores' worth of CPU other processes may use before the suite refuses (default 0.15)")
    p.add_argument("--before", default="", metavar="REV",
                   help="section 6 also measures the pages of commit REV on the same run, before/after "
                        "(bench/before_after.py; e.g. f988f4b, the commit before issue 14's components)")
    p.add_argument("--before-rounds", type=int, default=5, help="rounds of --before (default 5; quick: 1)")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad or not wanted:
        p.error(f"--sections takes numbers from 1 to 8 and load, e.g. 1,2,5 (got {args.sections!r})")
    args.sections = wanted
    if args.threads < 0:
        p.error("--threads must be 0 (all cores) or more")
    return args


def check_quiet(ctx_log: list, when: str, max_busy: float) -> tuple[bool, str]:
    """Measure the CPU for ~1 s; (quiet?, description). Logged into the results."""
    load = measure_load(1.0)
    ctx_log.append({"when": when, "busy_cores": round(load.busy_cores, 3), "cores": load.cores,
                    "busiest": [{"pid": pid, "cores": round(c, 2), "command": cmd[:120]} for pid, c, cmd in load.top[:5]]})
    return load.busy_cores <= max_busy, load.describe()


def run_section(ctx: Context, section: str) -> None:
    from . import browser, interactive, memory, quality, small, throughput

    if section == "1":
        throughput.section_1_2(ctx)  # also section 2's fractions of the peak, and 4's thread speed-up
    elif section == "2":
        if "1_2_throughput" not in ctx.sections:  # asked for 2 without 1: the shared part first
            throughput.section_1_2(ctx)
        throughput.section_2_bf16(ctx)
    elif section == "3":
        small.section_3(ctx)
    elif section == "4":
        throughput.section_4(ctx)
    elif section == "5":
        interactive.section_5(ctx)
    elif section == "6":
        browser.section_6(ctx)
    elif section == "7":
        memory.section_7(ctx)
    elif section == "8":
        quality.section_8(ctx)
    elif section == "load":
        from . import load

        load.section_load(ctx)


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(rows: list[dict]) -> str:
    """The results as aligned text: section, measurement, value, ratio to the baseline, target."""
    head = ("§", "measurement", "value", "unit", "ratio", "baseline", "target", "met")
    body = [(r["section"], r["name"], fmt(r["value"]), r["unit"], fmt(r["ratio"]), r["baseline"],
             r["target"], "" if r["met"] is None else fmt(r["met"])) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r, b in zip(rows, body):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(b, widths)).rstrip())
        if r["note"]:
            lines.append(" " * (widths[0] + 2) + "  " + r["note"])
    return "\n".join(lines)


def _clean(obj):
    """JSON-safe: non-finite floats become null, tuples lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else HERE / ("results-quick.json" if args.quick else "results.json")
    threads = args.threads or os.cpu_count() or 1
    loads: list[dict] = []
    quiet, described = check_quiet(loads, "start", args.max_busy)
    if not quiet and not args.force:
        print(f"bench: refusing to start: the CPU is busy: {described}.\n"
              f"Timings on loaded cores are meaningless (a {threads}-thread run can be many times slower with "
              "nothing in its output showing it). Wait until the machine is quiet, or pass --force to run "
              "anyway (the results are then marked forced).", file=sys.stderr)
        return EXIT_BUSY
    if not quiet:
        print(f"bench: --force: running on a busy CPU ({described}); the figures are marked forced", file=sys.stderr)

    sizes = Sizes.quick() if args.quick else Sizes()
    t_start = time.perf_counter()
    errors = {}
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        ctx = Context(sizes=sizes, threads=threads, workdir=Path(tmp), quick=args.quick, before=args.before,
                      before_rounds=1 if args.quick else max(1, args.before_rounds))
        for section in args.sections:
            if section != args.sections[0]:
                ok, described = check_quiet(loads, f"before section {section}", args.max_busy)
                if not ok:
                    print(f"bench: warning: other processes load the CPU before section {section}: {described}",
                          file=sys.stderr)
            t0 = time.perf_counter()
            print(f"bench: section {section} ...", file=sys.stderr, flush=True)
            try:
                run_section(ctx, section)
            except Exception as e:  # record it, go on with the other sections
                errors[section] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            print(f"bench: section {section} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        check_quiet(loads, "end", args.max_busy)

    busy_during = [entry for entry in loads if entry["busy_cores"] > args.max_busy]
    rows = [r.__dict__ for r in ctx.rows]
    results = {
        "suite": "VAE Latent Explorer benchmarks (bench/, issue 8)",
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "machine": machine(), "threads": threads, "sizes": sizes_dict(sizes),
        "forced": not quiet, "quiet_throughout": not busy_during, "max_busy_cores": args.max_busy,
        "cpu_load_checks": loads, "wall_s": time.perf_counter() - t_start,
        "sections_run": args.sections, "errors": errors, "rows": rows, "details": ctx.sections,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    from trainer.fileio import atomic_write_json

    atomic_write_json(out, _clean(results))
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), torch {m['torch']}, {m['date']}; "
          f"{threads} threads; {'quick' if args.quick else 'full'} sizes; {results['wall_s']:.0f} s")
    if busy_during:
        print("NOTE: other processes loaded the CPU during this run (see cpu_load_checks): the figures are not "
              "from a quiet machine")
    print(table(rows))
    for section, message in errors.items():
        print(f"section {section} FAILED: {message}")
    print(f"\nresults: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
