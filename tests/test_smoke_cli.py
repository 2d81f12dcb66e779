"""The command line end to end on digits: fit, eval --json, sample."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def run_cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_fit_eval_sample(tmp_path):
    out = tmp_path / "run"
    run_cli("fit", "--data", "digits", "--out", str(out), "--epochs", "3", "--threads", "1", "--quiet")
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "status.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    result = json.loads(run_cli("eval", str(out), "--k", "50", "--json", "--threads", "1", "--no-quadrature").stdout)
    for key in ("n", "elbo", "recon", "kl", "log_px", "gap", "active_units"):
        assert key in result
    assert result["n"] == 359
    assert abs(result["elbo"] - (result["recon"] - result["kl"])) < 1e-6
    png = tmp_path / "s.png"
    run_cli("sample", str(out), "--n", "16", "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_argument_exits_2_with_one_line(tmp_path):
    p = run_cli("fit", "--data", "no-such-data", "--out", str(tmp_path / "r"), check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no-such-data" in p.stderr
    assert "Traceback" not in p.stderr
