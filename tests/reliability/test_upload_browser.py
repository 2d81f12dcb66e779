"""Once in a real browser: a zip bomb and a zip with a path escaping its folder, uploaded on
the Train page of a real Streamlit server, are refused by the server with a one-line
message; nothing is saved and the existing run still opens."""

from __future__ import annotations

import shutil
import zlib

import pytest

from tests.e2e import harness
from tests.e2e.conftest import open_view

from .test_uploads import handmade_zip, png_bytes, zeros_deflate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_run):
    base = tmp_path_factory.mktemp("upload-browser")
    runs = base / "runs"
    runs.mkdir()
    shutil.copytree(tiny_run, runs / "tiny", ignore=shutil.ignore_patterns(".lock"))  # no first-start training
    app = harness.start_app(runs, base / "streamlit.log")
    yield app
    harness.stop_app(app)


def test_zip_bomb_and_escaping_zip_refused_in_the_browser(server, tiny_run):
    from playwright.sync_api import sync_playwright

    png = png_bytes(3)
    uploads = {
        "bomb.zip": (handmade_zip([("big.png", zeros_deflate(300), 300 << 20, 0, 8)]), "unpacks to more than 64 MB"),
        "escape.zip": (handmade_zip([("../../evil.png", png, len(png), zlib.crc32(png), 0)]),
                       "escapes its folder"),
    }
    with sync_playwright() as p:
        browser = harness.launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(harness.PAGE_S * 1000)
            for filename, (data, expected) in uploads.items():
                open_view(page, server, "train", "Train", run="tiny")  # a new session: an empty uploader
                page.get_by_text("Use your own data (upload)").click()
                harness.keyed(page, "upload_files").locator("input[type=file]").set_input_files(
                    files=[{"name": filename, "mimeType": "application/zip", "buffer": data}])
                error = page.locator('[data-testid="stAlertContentError"]').filter(has_text=filename)
                error.wait_for()
                harness.wait_idle(page)
                message = error.inner_text().strip()
                assert "\n" not in message and expected in message, message
                harness.assert_no_traceback(page)
            uploaded = server.runs_dir / "uploads"
            assert not uploaded.exists() or list(uploaded.iterdir()) == []
            assert not (server.runs_dir.parent / "evil.png").exists()

            open_view(page, server, "latent-map", "Latent map", run="tiny")
            harness.keyed(page, "latent_map_chart").locator("canvas").first.wait_for()
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            harness.assert_no_traceback(page)
        finally:
            browser.close()
