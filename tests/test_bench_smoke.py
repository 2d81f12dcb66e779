"""The benchmark suite starts, runs every section at tiny sizes and writes valid JSON; and it
refuses to start while other processes load the CPU. Speed itself is never asserted here:
bench/ reports it (python -m bench)."""

import json
import math
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BUSY_LOOP = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"


def run_bench(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.slow
def test_quick_run_writes_valid_json(tmp_path):
    out = tmp_path / "results.json"
    sections = ["1", "2", "3", "4", "5", "7", "8"]  # 6 (the browser) is tests/test_bench_smoke.py's e2e test
    p = run_bench("--quick", "--force", "--threads", "1", "--sections", ",".join(sections), "--out", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    results = json.loads(out.read_text())  # valid JSON (NaN/inf would not parse as such)
    assert results["mode"] == "quick" and results["errors"] == {}
    assert results["sections_run"] == sections
    assert results["machine"]["cores"] >= 1 and results["threads"] == 1
    assert isinstance(results["forced"], bool) and results["cpu_load_checks"]
    rows = results["rows"]
    assert {r["section"] for r in rows} == set(sections), "every section reports at least one row"
    for r in rows:
        assert r["value"] is None and r["note"] or finite(r["value"]), r
        assert r["met"] in (True, False, None)
    assert str(out) in p.stdout and "measurement" in p.stdout  # the table was printed

    # The figures agree with the raw measurements they are computed from.
    detail = results["details"]["1_2_throughput"]
    run = detail["by_threads"]["1"]
    times = run["ours_epoch_s"][1:]
    assert len(run["ours_epoch_s"]) == results["sizes"]["epochs"]
    assert run["ours_samples_per_s"] == pytest.approx(detail["n_train"] / sorted(times)[len(times) // 2])
    assert run["ours_fraction_of_peak"] == pytest.approx(
        run["ours_samples_per_s"] * detail["flop_per_sample"] / run["matmul_peak_flops"])
    assert detail["flop_per_sample"] == 6 * detail["matrix_weights"]
    if detail["peer"]:  # pythae installed (requirements-bench.txt): the ratio is ours / theirs
        assert run["ratio_ours_to_peer"] == pytest.approx(run["ours_samples_per_s"] / run["peer_samples_per_s"])
        quality = results["details"]["8_quality"]["log_px"]
        assert all(v["mean"] < 0 for v in quality.values()), quality  # log p(x) of 64 pixels in [0, 1]
    memory = results["details"]["7_memory"]
    assert memory["peak_rss_bytes"] > memory["import_rss_bytes"] > 0
    assert memory["data_bytes"] == results["sizes"]["rss_n"] * 784 * 4


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_browser_section(tmp_path):
    out = tmp_path / "results.json"
    p = run_bench("--quick", "--force", "--threads", "1", "--sections", "6", "--out", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    results = json.loads(out.read_text())
    detail = results["details"]["6_browser"]
    assert detail["cold_start_to_map_s"] > detail["server_up_s"] > 0
    assert len(detail["slider_ms"]) == results["sizes"]["browser_moves"]
    assert all(finite(v) and v > 0 for v in detail["slider_ms"])
    assert detail["drag_step_ms"] and all(finite(v) and v >= 0 for v in detail["drag_step_ms"])
    assert detail["drag_messages"] == 0  # the Interpolate drag is drawn in the page
    assert detail["interpolate_message_bytes"] > 0 and detail["interpolate_open_bytes"] > 0
    latent_map = results["details"]["6_browser_map"]  # bench/browser_map.py
    assert len(latent_map["click_ms"]) == results["sizes"]["browser_moves"]
    assert latent_map["thumbnail_ms"] and latent_map["decoded_ms"] and latent_map["open_bytes"] > 0
    assert all(finite(v) and v > 0 for k in ("click_ms", "thumbnail_ms", "decoded_ms") for v in latent_map[k])


def test_refuses_to_start_while_the_cpu_is_busy(tmp_path):
    out = tmp_path / "results.json"
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        p = run_bench("--quick", "--sections", "4", "--out", str(out), timeout=120)
    finally:
        for proc in loops:
            proc.kill()
            proc.wait()
    assert p.returncode == 3, p.stderr
    assert "refusing to start" in p.stderr and "--force" in p.stderr
    busy = float(re.search(r"([\d.]+) of \d+ cores busy", p.stderr).group(1))
    assert busy >= 0.9, p.stderr  # the two loops alone keep (nearly) a core busy or more
    assert not out.exists()


def test_before_tree_reads_a_copy_of_the_run(tmp_path, digits_run):
    """--before (bench/before_after.py): the commit before issue 14's components is exported
    whole and removed afterwards; it refuses today's config.json (a field added since) and
    reads the copy made for it, whose weights are the same bytes."""
    from bench import before_after

    known = subprocess.run(["git", "cat-file", "-e", "f988f4b^{commit}"], cwd=ROOT,
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip("this clone has no history back to f988f4b (a shallow clone): --before needs it")
    check = ("import json, sys; from trainer.config import RunConfig; from trainer.errors import TrainerError\n"
             "try: RunConfig.from_dict(json.load(open(sys.argv[1]))); print('ok')\n"
             "except TrainerError as e: print('refused:', e)")
    with before_after.exported_tree("f988f4b") as (commit, tree):
        assert commit.startswith("f988f4b") and len(commit) == 40
        old_map = (tree / "explorer" / "views" / "latent_map.py").read_text()
        assert "st.plotly_chart" in old_map and not (tree / "explorer" / "components").exists()
        original = subprocess.run([sys.executable, "-c", check, str(digits_run / "config.json")], cwd=tree,
                                  capture_output=True, text=True, check=True).stdout
        assert original.startswith("refused:") and "standardize" in original, original
        before_after.readable_copy(digits_run.parent, tmp_path / "old-runs", tree, run=digits_run.name)
        copy = tmp_path / "old-runs" / digits_run.name
        read = subprocess.run([sys.executable, "-c", check, str(copy / "config.json")], cwd=tree,
                              capture_output=True, text=True, check=True).stdout
        assert read.strip() == "ok", read
    assert not tree.exists(), "the exported tree was left behind"
    assert (copy / "model.safetensors").read_bytes() == (digits_run / "model.safetensors").read_bytes()
    kept = json.loads((copy / "config.json").read_text())
    assert kept == {k: v for k, v in json.loads((digits_run / "config.json").read_text()).items() if k != "standardize"}
