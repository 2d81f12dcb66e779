"""Benchmarks of VAE Latent Explorer (issue 8): run `python -m bench` (see bench/__main__.py)."""
