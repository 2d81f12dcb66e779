"""A bad upload (a text file named .npz, an empty CSV) shows a clear one-line error in the
page, never a traceback; nothing saved is touched and the existing runs still open."""

import hashlib

import pytest

from tests.e2e import harness
from tests.e2e.conftest import open_view

BAD_FILES = {
    "text-file.npz": b"These are not the arrays you are looking for.\nJust text.\n",
    "empty.csv": b"",
}


def folder_digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("filename", list(BAD_FILES))
def test_bad_upload_shows_a_clear_error(page, app, trained_run, filename):
    saved_before = folder_digest(trained_run.path)
    open_view(page, app, "train", "Train", run=trained_run.name)
    page.get_by_text("Use your own data (upload)").click()
    uploader = harness.keyed(page, "upload_files")
    uploader.locator("input[type=file]").set_input_files(
        files=[{"name": filename, "mimeType": "application/octet-stream", "buffer": BAD_FILES[filename]}])

    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text=filename)
    error.wait_for()
    harness.wait_idle(page)
    message = error.inner_text().strip()
    assert "\n" not in message and len(message) < 300, f"not a one-line message: {message!r}"
    harness.assert_no_traceback(page)
    assert not (app.runs_dir / "uploads" / filename).exists(), "the bad file was kept"
    harness.keyed(page, "train_data").click()
    options = page.get_by_role("option").all_inner_texts()
    assert options and not any(filename in o for o in options), options
    page.keyboard.press("Escape")

    # The existing run still opens, unchanged.
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    harness.keyed(page, "latent_map_chart").locator("canvas").first.wait_for()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    harness.assert_no_traceback(page)
    assert folder_digest(trained_run.path) == saved_before
