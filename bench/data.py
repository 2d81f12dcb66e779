"""MNIST-sized generated data with learnable structure: smooth blobs on 28 x 28.

Random pixels teach a VAE nothing (its loss stays flat and its speed may differ from real
training: dead ReLUs, subnormal Adam moments), so each image is the sum of a few round
Gaussian blobs with random centre, radius and brightness, clipped to [0, 1]. A handful of
numbers explain each image, the way a few strokes explain a digit.
"""

from __future__ import annotations

import numpy as np
import torch

SIZE = 28  # image side, pixels: 28 x 28 = 784, MNIST's size


def blobs(n: int, seed: int = 0, blobs_per_image: int = 3, chunk: int = 4096) -> torch.Tensor:
    """n images (n, 1, 28, 28), float32 in [0, 1]; the same seed gives the same images.

    Written chunk by chunk into one preallocated tensor, so memory stays at the data's size.
    """
    gen = torch.Generator().manual_seed(seed)
    grid = torch.arange(SIZE, dtype=torch.float32).view(1, 1, SIZE)  # pixel coordinates
    out = torch.empty(n, 1, SIZE, SIZE)
    k = blobs_per_image
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cx = torch.rand(m, k, 1, generator=gen) * (SIZE - 8) + 4  # centre, pixels
        cy = torch.rand(m, k, 1, generator=gen) * (SIZE - 8) + 4
        radius = torch.rand(m, k, 1, generator=gen) * 3.0 + 1.5
        brightness = torch.rand(m, k, 1, generator=gen) * 0.6 + 0.4
        # A round Gaussian is separable: exp(-(dx^2 + dy^2) / 2r^2) = gy(row) * gx(col).
        gx = torch.exp(-(grid - cx) ** 2 / (2 * radius**2))  # (m, k, 28)
        gy = brightness * torch.exp(-(grid - cy) ** 2 / (2 * radius**2))  # (m, k, 28)
        img = torch.bmm(gy.transpose(1, 2), gx)  # (m, 28, 28): sum over the k blobs
        out[start:start + m, 0] = img.clamp_(0.0, 1.0)
    return out


def save_npy(path, n: int, seed: int = 0) -> int:
    """Write `blobs(n, seed)` to an .npy file (for the trainer's command line, which opens
    large .npy files memory-mapped); returns the bytes of data."""
    x = blobs(n, seed).numpy()
    np.save(path, x)
    return x.nbytes
