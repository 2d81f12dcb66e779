"""The Interpolate page's component (Streamlit custom components v2): the t slider, the
decoded image at t and a small latent map with the path and z(t), drawn in the page from
one message of bytes (explorer/services/path_payload.py), so that a drag needs no server.

Its HTML, CSS and JavaScript are the files beside this one, read once at import; nothing is
fetched at run time. Contract (checked outside the test suite): the slider is a native
<input type="range"> named "t"; the decoded image is a <canvas aria-label="decoded image
at t"> ("decoded values at t" for data that is not an image, drawn as bars).

The page hears of t on each `change` event (a drag's release, each key press) as the state
value "t", and of a click on a code of the map as the trigger value "picked" (its test index).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
NAME = "vae_explorer.interpolation"

_component = st.components.v2.component(
    NAME,
    html=(HERE / "interpolation.html").read_text(encoding="utf-8"),
    css=(HERE / "interpolation.css").read_text(encoding="utf-8"),
    js=(HERE / "interpolation.js").read_text(encoding="utf-8"),
    # In the page's own DOM, not a shadow root: the slider and the image are found by plain
    # document queries and the accessibility tree as any other element (the CSS is scoped).
    isolate_styles=False,
)


def interpolation(message: bytes, *, key: str, on_t_change: Callable[[], None],
                  on_picked_change: Callable[[], None]):
    """Mount the component with one path's message (path_payload.payload). Returns its
    result: .t (the t of the last release, None until the first one since it was mounted)
    and .picked (the test index a map click chose in this rerun, else None)."""
    return _component(key=key, data=message, on_t_change=on_t_change, on_picked_change=on_picked_change)
