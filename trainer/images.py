"""Images as arrays: tiling a batch into a grid and saving it as PNG (atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .errors import TrainerError


def to_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (rows*H, cols*W[, 3]) uint8 array: RGB from the first
    three channels when C >= 3 (alpha dropped), else grey from the first channel."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    return np.moveaxis(grid[:3], 0, -1) if c >= 3 else grid[0]


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    from PIL import Image

    im = Image.fromarray(array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: np.ndarray, out: str | Path) -> None:
    from .fileio import atomic_write_bytes

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise TrainerError(f"{out}: the output must be a .png file")
    if not out.parent.exists():
        raise TrainerError(f"{out.parent}: no such folder")
    h = images.shape[-2]
    atomic_write_bytes(out, png_bytes(to_grid(images), scale=max(1, 64 // h)))
