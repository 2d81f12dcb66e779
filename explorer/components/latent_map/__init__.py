"""The in-page latent map: a Streamlit custom component (v2) that draws the test set's codes on
a canvas and runs hover, zoom, pan, decode-at-cursor and the epoch player in the browser.

map.js and map.css in this folder are read from disk once, at import; nothing is fetched at
run time. What the map draws comes from explorer/services/inpage.py as two binary payloads
(`payload`, mounted hidden and kept by the page by id) and a small JSON view (`latent_map`)
that names them, so that a rerun which changes only the selection re-sends only the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

_HERE = Path(__file__).parent
NAME = "vae_latent_map"

_component = st.components.v2.component(
    NAME,
    html='<div class="vlm-mount"></div>',
    css=(_HERE / "map.css").read_text(encoding="utf-8"),
    js=(_HERE / "map.js").read_text(encoding="utf-8"),
    isolate_styles=False,  # in the page's DOM, so that every aria-label is found as it is
)


def payload(blob: bytes, key: str) -> None:
    """Send one binary payload (inpage.pack) to the page, which keeps it by its id. Drawn
    hidden; an unchanged blob is not re-sent on a rerun (Streamlit caches it by hash)."""
    _component(key=key, data=blob, height="content")


def latent_map(view: dict, key: str, on_select: Callable[[], None]):
    """The map itself. view: the JSON the page draws from: "samples" and "points" (payload
    ids), "selected" (a test index), "view_key" (zoom and pan are kept per view key),
    "axes" (titles), "decode" (decode at the cursor), "contours", "manifold" (overlays).
    A click on a point sets the state value "selected" to {"index": i, "click": n} and calls
    on_select; read it with selected_index(key)."""
    return _component(key=key, data=view, default={"selected": None}, on_selected_change=on_select,
                      height="content")


def selected_index(key: str) -> int | None:
    """The test index the last click on the map selected, if any."""
    result = st.session_state.get(key)
    try:
        value = result["selected"]
    except (KeyError, TypeError):
        value = getattr(result, "selected", None)
    if isinstance(value, dict):
        value = value.get("index")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
