"""What the sessions share (issue 17): figures built once per (checkpoint, sample) and run
summaries kept while their files are unchanged must still follow every change a user or a
trainer makes: another sample, another session, a metrics row appended, a file rewritten."""

from __future__ import annotations

import json
import os

import pytest

from explorer.services import explore
from explorer.services import runs as run_service
from explorer_helpers import assert_clean, plotly_specs
from trainer import load_run
from trainer.fileio import atomic_write_bytes


def _histogram_marks(at) -> list[float]:
    """The dashed lines of the ELBO page's histograms: the selected sample's elbo, recon, -kl."""
    spec = next(s for s in plotly_specs(at) if [t["type"] for t in s["data"]] == ["histogram"] * 3)
    return [shape["x0"] for shape in spec["layout"]["shapes"]]


def _waterfall(at) -> dict:
    return next(s for s in plotly_specs(at) if s["data"][0]["type"] == "bar" and "base" in s["data"][0])


def test_the_elbo_pages_shared_figures_follow_the_sample(make_app, runs_dir):
    enc = explore.encode_test(load_run(runs_dir / "digits-2d"))  # the reference: the page's cache not used
    expected = {i: pytest.approx([enc.elbo[i], enc.recon[i], -enc.kl[i]], abs=1e-9) for i in (3, 11)}

    at = make_app(runs_dir, view="elbo", sample=3).run()
    assert_clean(at)
    assert _histogram_marks(at) == expected[3]
    first = plotly_specs(at)
    at.number_input(key="elbo_sample_index").set_value(11).run()
    assert_clean(at)
    assert _histogram_marks(at) == expected[11]  # another sample: another figure, not the kept one
    metrics = {m.label: float(m.value) for m in at.metric}
    bars = _waterfall(at)["data"][0]["y"]
    assert bars[0] == pytest.approx(metrics["recon"], abs=0.006) and bars[1] == pytest.approx(metrics["-KL"], abs=0.006)

    other = make_app(runs_dir, view="elbo", sample=3).run()  # a second session on sample 3: the same figures
    assert_clean(other)
    assert plotly_specs(other) == first


def test_a_shared_run_summary_follows_its_files(scratch_runs):
    path = scratch_runs / "digits-2d"
    s = run_service.summary(path)
    assert s == run_service.summarize(path) and run_service.summary(path) is s  # shared while unchanged

    metrics = path / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    row = {**rows[-1], "epoch": rows[-1]["epoch"] + 1}
    with open(metrics, "a") as f:  # a trainer appending a row
        f.write(json.dumps(row) + "\n")
    assert run_service.summary(path).epoch == s.epoch + 1

    # the same number of bytes, written atomically (a new file), within the same clock tick
    text = metrics.read_text()
    last = json.loads(text.splitlines()[-1])
    changed = text.replace(json.dumps(row), json.dumps({**last, "epoch": last["epoch"] + 1}))
    assert len(changed) == len(text)
    before = os.stat(metrics)
    atomic_write_bytes(metrics, changed.encode())
    os.utime(metrics, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert run_service.summary(path).epoch == s.epoch + 2
    assert run_service.summary(path) == run_service.summarize(path)

    assert run_service.summary(path).config is not None
    os.remove(path / "config.json")  # the settings gone: the summary says so at once
    assert run_service.summary(path).config is None
    assert run_service.summary(path) == run_service.summarize(path)
    assert [r.config for r in run_service.list_runs(scratch_runs)] == [None]


def test_the_time_left_read_from_the_metrics_tail_is_the_whole_files(scratch_runs):
    """jobs._eta reads only the end of metrics.jsonl: the same seconds left as from every row,
    for a short file, a long one (past the tail's size) and one whose last line is cut off."""
    from explorer.services import jobs
    from trainer.runs import read_metrics

    path = scratch_runs / "digits-2d"
    metrics = path / "metrics.jsonl"
    rows = read_metrics(path)
    started, epochs = rows[0]["wall_time"] - 1.0, 10 * len(rows) * 100

    def whole_file() -> float:
        timed = [r for r in read_metrics(path) if isinstance(r.get("wall_time"), (int, float))]
        done = timed[-1].get("epoch") or len(timed)
        return max(0.0, (timed[-1]["wall_time"] - started) / max(1, done) * (epochs - done))

    assert jobs._eta(path, {"started": started}, 0, epochs) == pytest.approx(whole_file(), rel=1e-12)
    longer = [{**r, "epoch": k * len(rows) + r["epoch"], "wall_time": r["wall_time"] + k}
              for k in range(100) for r in rows]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in longer))
    assert metrics.stat().st_size > jobs.METRICS_TAIL_BYTES
    assert jobs._eta(path, {"started": started}, 0, epochs) == pytest.approx(whole_file(), rel=1e-12)
    with open(metrics, "a") as f:
        f.write('{"epoch": 99999, "wall_ti')  # a row being written
    assert jobs._eta(path, {"started": started}, 0, epochs) == pytest.approx(whole_file(), rel=1e-12)
    assert jobs._eta(path, {}, 0, epochs) is None


def test_a_summary_read_from_the_metrics_tail_is_the_whole_files(scratch_runs):
    """runs.summarize reads only the end of metrics.jsonl (a running job appends a row every
    epoch, and the sidebar summarises it on every full rerun): the same epoch and final numbers
    as the last readable row of the whole file, for a long file, a cut-off last line, and an
    end with no readable row at all (then the whole file is read)."""
    from explorer.services import jobs
    from trainer.runs import read_metrics

    path = scratch_runs / "digits-2d"
    metrics = path / "metrics.jsonl"
    rows = read_metrics(path)

    def from_every_row() -> tuple:
        last = read_metrics(path)[-1]
        return last["epoch"], {k: last.get(k) for k in ("test_elbo", "test_recon", "test_kl", "train_elbo",
                                                         "sigma_dec", "active_units")}

    def summarized() -> tuple:
        s = run_service.summarize(path)
        return s.epoch, s.final

    longer = [{**r, "epoch": k * len(rows) + r["epoch"], "test_elbo": r["test_elbo"] - k}
              for k in range(100) for r in rows]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in longer))
    assert metrics.stat().st_size > jobs.METRICS_TAIL_BYTES
    assert summarized() == from_every_row() and summarized()[0] == longer[-1]["epoch"]
    with open(metrics, "a") as f:
        f.write('{"epoch": 99999, "test_el')  # a row being written
    assert summarized() == from_every_row()
    with open(metrics, "a") as f:  # an end longer than the tail with no readable row
        f.write("\n" + "not json\n" * (jobs.METRICS_TAIL_BYTES // 9 + 10))
    assert summarized() == from_every_row() and summarized()[0] == longer[-1]["epoch"]
