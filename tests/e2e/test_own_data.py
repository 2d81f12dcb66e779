"""Issue 15 in a real browser, on a server of its own (a runs folder of copies of the shared
digits run, so no first-start training): the Runs page (log p(x) estimated once and read back
on the next visit, the seed column, the selected row after a delete), the one-line messages
for a run or a runs folder that is not there and for a job that is starting, the upload list,
and the downloads."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e import harness
from tests.e2e.conftest import new_page, open_view
from tests.e2e.harness import TRAIN_S

RUNS = ("a", "b", "c")  # copies of the shared digits run, newest first


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_run):
    base = tmp_path_factory.mktemp("own-data")
    runs = base / "runs"
    runs.mkdir()
    now = time.time()
    for i, name in enumerate(reversed(RUNS)):
        shutil.copytree(digits_run, runs / name, ignore=shutil.ignore_patterns(".lock", "log_px.json"))
        os.utime(runs / name, (now + i, now + i))
    app = harness.start_app(runs, base / "streamlit.log")
    yield app
    harness.stop_app(app)



def table(page) -> list[dict]:
    return harness.table_rows(harness.keyed(page, "runs_table"))


def selected_rows(page) -> list[str]:
    """The runs whose row is selected (ticked) in the Runs table."""
    return harness.keyed(page, "runs_table").locator("table").first.evaluate(
        "t => Array.from(t.querySelectorAll('tbody tr[aria-selected=\"true\"] td[aria-colindex=\"1\"]'))"
        ".map(td => td.textContent.trim())")


def choose(page, key: str, option: str) -> None:
    """Pick `option` in the selectbox drawn with key=KEY."""
    box = harness.keyed(page, key).locator("input")
    box.click()
    box.fill(option)
    box.press("Enter")
    harness.wait_idle(page)


def wait_log_px(page, names) -> dict[str, str]:
    """Wait until the Runs table shows log p(x) for every run in names; returns them."""
    deadline = time.monotonic() + harness.PAGE_S
    while time.monotonic() < deadline:
        harness.wait_idle(page)
        shown = {r["run"]: r["log p(x)"] for r in table(page) if r["run"] in names}
        if len(shown) == len(names) and all(shown.values()):
            return shown
        time.sleep(0.3)
    raise AssertionError(f"log p(x) not shown for every run: {shown}")


def test_runs_page(server, page):
    open_view(page, server, "runs", "Runs", run="b")
    shown = wait_log_px(page, RUNS)
    assert [r["run"] for r in table(page)][:3] == list(RUNS)
    cache = {n: server.runs_dir / n / "log_px.json" for n in RUNS}
    stamps = {n: cache[n].stat().st_mtime_ns for n in RUNS}
    for n in RUNS:  # what the table shows is what the run folder keeps
        assert shown[n] == f"{json.loads(cache[n].read_text())['evaluation']['log_px']:.2f}"
    seed = json.loads((server.runs_dir / "b" / "config.json").read_text())["train"]["seed"]
    assert {r["seed"] for r in table(page)} == {str(seed)}
    assert selected_rows(page) == ["b"], "the active run's row is the selected one"

    # a second visit (a new session) reads log p(x) from the run folders: nothing estimated again
    context2, second = new_page(page.context.browser)
    try:
        open_view(second, server, "runs", "Runs", run="b")
        assert wait_log_px(second, RUNS) == shown
        assert {n: cache[n].stat().st_mtime_ns for n in RUNS} == stamps
    finally:
        context2.close()

    # delete a, the row above b: the selection stays on b (it was row 2, it is now row 1)
    choose(page, "delete_name", "a")
    harness.keyed(page, "delete_run").locator("button").click()
    harness.keyed(page, "confirm_delete").locator("button").click()
    page.get_by_text("Deleted a.").wait_for()
    harness.wait_idle(page)
    assert not (server.runs_dir / "a").exists()
    assert [r["run"] for r in table(page)][:2] == ["b", "c"]
    assert selected_rows(page) == ["b"]
    harness.assert_no_traceback(page)


def error_text(page) -> list[str]:
    return [e.inner_text().strip() for e in page.locator('[data-testid="stAlertContentError"]').all()]


def test_messages_say_what_happened(server, page):
    # a link to a run that is not there: said, not swapped for another run
    page.goto(f"{server.url}/latent-map?view=latent-map&run=no-such-run")
    page.get_by_text("There is no run named 'no-such-run'").wait_for()
    harness.wait_idle(page)
    errors = error_text(page)
    assert len(errors) == 1 and "choose a run in the sidebar" in errors[0] and "\n" not in errors[0], errors
    assert harness.keyed(page, "latent_map_chart").count() == 0

    # a runs folder that does not exist
    typo = server.runs_dir.parent / "rnus"
    box = harness.keyed(page, "runs_dir").locator("input")
    box.fill(str(typo))
    box.press("Enter")
    page.get_by_text(f"The runs folder {typo} does not exist").wait_for()
    harness.wait_idle(page)
    assert not page.get_by_text("There is no trained run yet").count()
    assert not typo.exists()

    # the only job of the runs folder is starting, not waiting in a queue
    open_view(page, server, "train", "Train")
    for key, value in (("train_epochs", 5), ("train_name", "fresh")):
        box = harness.keyed(page, key).locator("input")
        box.fill(str(value))
        box.press("Tab")
    page.evaluate("""() => { window.__seen = new Set();
        window.__seenTimer = setInterval(() => {
            const t = document.body.innerText;
            if (t.includes('waits in the training queue') || t.includes('waits in the queue')) window.__seen.add('queued');
            if (t.includes('fresh is starting')) window.__seen.add('starting');
        }, 100); }""")
    page.locator('[data-testid="stFormSubmitButton"] button').click()
    page.get_by_text("fresh finished 5 epochs").wait_for(timeout=TRAIN_S * 1000)
    seen = set(page.evaluate("() => Array.from(window.__seen)"))
    assert "queued" not in seen, "a job said it waits in a queue while nothing else trained"
    assert "starting" in seen
    harness.assert_no_traceback(page)


# -- uploads ---------------------------------------------------------------------------------

def csv_file(name: str, seed: int, rows: int = 60) -> dict:
    import numpy as np

    x = np.random.default_rng(seed).normal(size=(rows, 3))
    text = "a,b,c\n" + "".join(f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f}\n" for r in x)
    return {"name": name, "mimeType": "text/csv", "buffer": text.encode()}


def upload(page, files: list[dict]) -> None:
    harness.keyed(page, "upload_files").locator("input[type=file]").set_input_files(files=files)


def alert(page, kind: str, text: str):
    return page.locator(f'[data-testid="stAlertContent{kind}"]').filter(has_text=text)


def stored(server) -> list[str]:
    folder = server.runs_dir / "uploads"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_uploads_a_person_can_manage(server, page):
    open_view(page, server, "train", "Train")
    page.get_by_text("Use your own data (upload)").click()
    table_v1 = csv_file("table.csv", 1)

    # a bad file: an error, which goes once the file is removed from the uploader
    upload(page, [{"name": "short.csv", "mimeType": "text/csv", "buffer": b"a,b\n1,2\n"}])
    alert(page, "Error", "short.csv").wait_for()
    page.get_by_role("button", name="Remove short.csv").click()
    harness.wait_idle(page)
    assert alert(page, "Error", "short.csv").count() == 0, "the error stayed after its file was removed"

    # a table: saved and listed with its size
    upload(page, [table_v1])
    alert(page, "Success", "Saved table.csv").wait_for()
    harness.wait_idle(page)
    assert stored(server) == ["table.csv"]
    size = (server.runs_dir / "uploads" / "table.csv").stat().st_size
    listed = harness.keyed(page, "delete_upload_table_csv")
    assert listed.count() == 1
    assert page.get_by_text(f"table.csv · {size / 1024:.1f} kB").count() == 1

    # the same file again, in a new session: stored once; while that session holds it, this
    # session's next upload does not take it away
    context2, second = new_page(page.context.browser)
    try:
        open_view(second, server, "train", "Train")
        upload(second, [table_v1])
        alert(second, "Success", "Already stored as table.csv").wait_for()
        assert stored(server) == ["table.csv"]

        page.get_by_role("button", name="Remove table.csv").click()
        harness.wait_idle(page)
        upload(page, [csv_file("other.csv", 3)])
        alert(page, "Success", "Saved other.csv").wait_for()
        harness.wait_idle(page)
        assert stored(server) == ["other.csv", "table.csv"], "another session's upload was deleted"
        # neither session shows the other's upload or message
        assert alert(second, "Success", "other.csv").count() == 0
        assert alert(page, "Success", "Already stored as table.csv").count() == 0
    finally:
        context2.close()

    # another file replaces this session's pending upload: still one data set
    page.get_by_role("button", name="Remove other.csv").click()
    harness.wait_idle(page)
    upload(page, [csv_file("third.csv", 4)])
    alert(page, "Success", "Saved third.csv").wait_for()
    harness.wait_idle(page)
    assert stored(server) == ["table.csv", "third.csv"], "other.csv, this session's pending upload, was not replaced"

    # Delete refused while a run uses the upload, then allowed once the run is gone
    upload_path = server.runs_dir / "uploads" / "third.csv"
    run = server.runs_dir / "on-other"
    shutil.copytree(server.runs_dir / "c", run, ignore=shutil.ignore_patterns(".lock", "log_px.json"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = str(upload_path)
    (run / "config.json").write_text(json.dumps(cfg))
    open_view(page, server, "train", "Train")
    harness.keyed(page, "delete_upload_third_csv").locator("button").click()
    refused = alert(page, "Error", "Not deleted")
    refused.wait_for()
    assert "on-other" in refused.inner_text() and upload_path.exists()
    shutil.rmtree(run)
    harness.keyed(page, "delete_upload_third_csv").locator("button").click()
    alert(page, "Success", "Deleted the upload third.csv").wait_for()
    assert not upload_path.exists()
    assert "third.csv" not in stored(server)
    harness.assert_no_traceback(page)


# -- downloads -------------------------------------------------------------------------------

def download(page, label: str) -> bytes:
    """Press the download button `label`; the file's bytes as the browser saved them."""
    with page.expect_download() as info:
        page.get_by_role("button", name=label).click()
    return Path(info.value.path()).read_bytes()


def png_file_name(chart) -> str:
    """The file name plotly's camera button saves the chart's PNG under."""
    return chart.locator(".js-plotly-plot").first.evaluate("el => el._context.toImageButtonOptions.filename")


def test_downloads(server, page):
    import csv
    import io
    import zipfile

    import numpy as np
    import torch

    from trainer import load_run

    run = load_run(server.runs_dir / "c")
    data = run.load_data()
    with torch.no_grad():
        q = run.encode(data.x_test)  # q(z|x) of every test sample, straight from the trainer

    # the ELBO page: the test set's codes as CSV
    open_view(page, server, "elbo", "ELBO breakdown", run="c")
    rows = list(csv.DictReader(io.StringIO(download(page, "Test-set codes (CSV)").decode())))
    assert len(rows) == len(data.x_test)
    assert list(rows[0])[:2] == ["index", *data.label_names][:2]
    mu = np.array([[float(r["mu_1"]), float(r["mu_2"])] for r in rows])
    logvar = np.array([[float(r["logvar_1"]), float(r["logvar_2"])] for r in rows])
    np.testing.assert_allclose(mu, q.mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(logvar, q.logvar.expand_as(q.mu).numpy(), atol=1e-5)
    np.testing.assert_allclose([float(r["map_x_z"]) for r in rows], mu[:, 0])  # d = 2: the map is z itself
    np.testing.assert_array_equal([float(r[data.label_names[0]]) for r in rows], data.y_test[:, 0])
    elbo = np.array([float(r["elbo"]) for r in rows])
    np.testing.assert_allclose(elbo, [float(r["recon"]) - float(r["kl"]) for r in rows], atol=1e-4)
    assert png_file_name(harness.keyed(page, "elbo_waterfall")) == "c-elbo-elbo_waterfall"

    # Generate: the sample grid as the PNG the page shows
    open_view(page, server, "generate", "Generate", run="c")
    harness.wait_drawn(page)
    grid = download(page, "Sample grid (PNG)")
    assert grid[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    saved = np.asarray(Image.open(io.BytesIO(grid)).convert("L"), dtype=float)
    shown = np.asarray(Image.open(io.BytesIO(harness.image_bytes(  # the page shows it as a JPEG
        page, harness.captioned_image(page, "64 samples, seed 0")))).convert("L"), dtype=float)
    assert saved.shape == shown.shape and np.abs(saved - shown).mean() < 4, "the PNG is not the grid shown"
    strips = download(page, "Traversal strips (PNG)")
    assert strips[:8] == b"\x89PNG\r\n\x1a\n" and strips != grid

    # Runs: the active run's codes, the same file; the whole-run zip waits for trainer.bundle
    open_view(page, server, "runs", "Runs", run="c")
    again = download(page, "Test-set codes (CSV)")
    assert list(csv.DictReader(io.StringIO(again.decode()))) == rows
    assert png_file_name(harness.keyed(page, "compare_chart")) == "c-runs-compare_chart"
    bundle = download(page, "c as one zip")
    with zipfile.ZipFile(io.BytesIO(bundle)) as z:
        names = set(z.namelist())
    assert {"c/config.json", "c/model.safetensors"} <= names or {"config.json", "model.safetensors"} <= names, names
    # the same bundle imported into the folder that holds run c: refused, in one line, nothing changed
    before = sorted(p.name for p in server.runs_dir.iterdir())
    harness.keyed(page, "import_bundle").locator("input[type=file]").set_input_files(
        files=[{"name": "c.zip", "mimeType": "application/zip", "buffer": bundle}])
    refused = page.get_by_text("Not imported:")
    refused.wait_for(timeout=60_000)
    assert "\n" not in refused.first.inner_text().strip()
    assert sorted(p.name for p in server.runs_dir.iterdir()) == before
    harness.assert_no_traceback(page)
