"""Helpers for the AppTest-based tests: reading plotly figures and checking for errors."""

from __future__ import annotations

import json

import numpy as np


def plotly_specs(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def array(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata" (base64)[, "shape"]}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v)


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error], [e.value for e in at.error]


def interpolation_message(at) -> tuple[dict, dict[str, np.ndarray]]:
    """The Interpolate page's component message, unpacked: (header, blobs) (path_payload)."""
    from explorer.services import path_payload

    components = [e for e in at.get("bidi_component") if e.proto.component_name == "vae_explorer.interpolation"]
    assert len(components) == 1, f"{len(components)} interpolation components on the page"
    return path_payload.unpack(components[0].proto.bytes)


def latent_map(at) -> tuple[dict, tuple, tuple]:
    """The in-page latent map as the page receives it: (view JSON, samples payload, points
    payload), each payload (id, meta, arrays) as explorer.services.inpage.unpack reads it."""
    from explorer.services import inpage

    parts = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "vae_latent_map"]
    views = [json.loads(p.json) for p in parts if p.WhichOneof("data") == "json"]
    blobs = {inpage.payload_id(p.bytes): inpage.unpack(p.bytes) for p in parts if p.WhichOneof("data") == "bytes"}
    assert len(views) == 1, f"{len(views)} latent maps drawn"
    view = views[0]
    return view, blobs[view["samples"]], blobs[view["points"]]
