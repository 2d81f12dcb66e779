"""Results out: what the app's download buttons hand over, as bytes (no streamlit here).

    codes_csv     the test set's codes, one row per test sample: its index, labels (each in a
                  column named as in the data, e.g. "target"; a label of names shows the name,
                  as `python -m trainer encode` writes it), posterior mean mu_j and
                  log-variance logvar_j of q(z|x) per latent dimension, the per-sample ELBO
                  terms (nats, M = 1 draw of z, higher is better) and the latent map's
                  coordinates (z itself for d <= 2, else the map's projection)
    figure_config plotly's config for a chart: its PNG named after the run and the view

The whole run as a zip is trainer.bundle's (export_run / import_bundle), called by the Runs
page.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from .explore import Encoded, Projection


def codes_csv(enc: Encoded, projection: Projection) -> bytes:
    """The test set's codes as CSV (UTF-8, a header line, '.'-decimal numbers)."""
    d = enc.latent_dim
    labels = enc.label_names if enc.labels is not None else []
    method = "z" if projection.method == "identity" else projection.method.lower().replace("-", "")
    header = (["index", *labels, *[f"mu_{j + 1}" for j in range(d)], *[f"logvar_{j + 1}" for j in range(d)],
               "recon", "kl", "elbo", f"map_x_{method}", f"map_y_{method}"])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    classes = list(enc.class_names)  # the first label's category names: y == k is classes[k]
    for i in range(enc.n):
        lab = [_num(v) for v in enc.labels[i]] if labels else []
        if lab and classes and float(enc.labels[i, 0]).is_integer() and 0 <= int(enc.labels[i, 0]) < len(classes):
            lab[0] = classes[int(enc.labels[i, 0])]
        w.writerow([i, *lab, *map(_num, enc.mu[i]), *map(_num, enc.logvar[i]), _num(enc.recon[i]), _num(enc.kl[i]),
                    _num(enc.elbo[i]), *map(_num, projection.xy[i][:2])])
    return out.getvalue().encode("utf-8")


def vectors_csv(values: np.ndarray, feature_names: list[str]) -> bytes:
    """Vectors (N, D), e.g. decoded samples, as CSV with the features' names as the header."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(feature_names)
    for row in np.asarray(values).reshape(len(values), -1):
        w.writerow([_num(v) for v in row])
    return out.getvalue().encode("utf-8")


def _num(v) -> str:
    v = float(v)
    if v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(v) if np.isfinite(v) else ("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"))


def file_stem(*parts: str) -> str:
    """A file name from its parts: 'digits-2d', 'elbo', 'waterfall' -> 'digits-2d-elbo-waterfall'."""
    text = "-".join(str(p) for p in parts if p)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "figure"


def figure_config(run: str | None, view: str | None, figure: str | None = None) -> dict:
    """plotly's config for st.plotly_chart: the camera button saves RUN-VIEW-FIGURE.png."""
    return {"toImageButtonOptions": {"format": "png", "filename": file_stem(run or "", view or "", figure or "")}}
