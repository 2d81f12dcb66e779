"""Pictures of decoded means for the page: clipped to [0, 1], tiled into a grid, as PNG
bytes or a data: URL, and the decoded-manifold picture the latent map lays under its points.

Arrays in, pictures out; no streamlit. The tiling and the PNG encoding are
trainer/images.py's.
"""

from __future__ import annotations

import base64

import numpy as np

from trainer.images import png_bytes, to_grid


def images_for_display(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) decoded means -> clipped to [0, 1] for display."""
    return np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)


def png(images: np.ndarray, ncols: int | None = None, size: int = 64) -> bytes:
    """A grid of images (N, C, H, W) in [0, 1] as PNG bytes, each scaled up with sharp pixels
    to about `size` pixels."""
    images = images_for_display(images)
    h = images.shape[-2]
    return png_bytes(to_grid(images, ncols=ncols), scale=max(1, round(size / h)))


def png_data_url(images: np.ndarray, ncols: int | None = None, size: int = 64) -> str:
    """png() as a data: URL, which st.image passes to the page as it is (no media file)."""
    return "data:image/png;base64," + base64.b64encode(png(images, ncols, size)).decode("ascii")


def manifold_background(images: np.ndarray, n: int, span: float, scale: int = 4) -> tuple[np.ndarray, float]:
    """The decoded grid (n*n, C, H, W) as one picture to lay under the latent map: dark ink on
    a light ground (so coloured points stay visible), 1-px light gaps between tiles, scaled up
    with sharp pixels. Returns (uint8 image, half-width of its extent in latent units), the
    extent chosen so that each tile is centred on the code it was decoded from."""
    grid = to_grid(1.0 - images_for_display(images), ncols=n, pad=1)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return grid, span * (1 + 1 / (n - 1)) if n > 1 else span
