"""Screenshots of each view of the trained default run, to test-artifacts/view-VIEW.png; with
$VAE_SCREENSHOTS_DIR set (`make screenshots` sets docs/screenshots) also the ones the README
shows. Each view is checked to draw without an error on the way, and that each of its images
has an accessible name."""

import io

from PIL import Image

from tests.e2e import harness
from tests.e2e.conftest import open_view

VIEWS = [("latent-map", "Latent map"), ("interpolate", "Interpolate"), ("elbo", "ELBO breakdown"),
         ("generate", "Generate"), ("runs", "Runs"), ("train", "Train")]


def test_screenshots_of_each_view(page, app, trained_run, screenshot_dirs):
    for view, title in VIEWS:
        open_view(page, app, view, title, run=trained_run.name)
        harness.wait_drawn(page)
        harness.assert_no_traceback(page)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0, f"an error on {title}"
        # every image on the page has an accessible name (alt text; a caption is not one)
        alts = page.locator('[data-testid="stMain"] img').evaluate_all("els => els.map(e => e.alt || '')")
        assert all(a.strip() for a in alts), f"an image without a name on {title}: {alts}"
        path = harness.screenshot(page, f"view-{view}", *screenshot_dirs)
        for shot in [path] + [d / path.name for d in screenshot_dirs]:
            with Image.open(io.BytesIO(shot.read_bytes())) as img:
                assert img.format == "PNG" and img.width >= 1000 and img.height >= 600, (shot, img.size)
