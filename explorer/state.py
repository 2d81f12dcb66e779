"""State that lives in the URL, so that a copied link reopens the same view.

    ?view=interpolate&run=digits-2d&a=3&b=17&t=0.35&path=slerp&sample=3

view    the page (also the URL path; kept as a parameter too so a bare link works)
run     the active run's name
a, b    the interpolation endpoints (test-set indices)
t       the position on the path, in [0, 1]
path    lerp or slerp
sample  the selected test sample (latent map, ELBO breakdown)

The values are kept in st.session_state under "_url" (widget state is dropped when a page
is left; this is not), read from the URL once per session and written back on every run.
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

_STORE = "_url"
_LOADED = "_url_loaded"


def _parse_int(v: str) -> int | None:
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if 0 <= i < 10**9 else None


def _parse_t(v: str) -> float | None:
    try:
        t = float(v)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, t)) if math.isfinite(t) else None


def _parse_path(v: str) -> str | None:
    return v if v in ("lerp", "slerp") else None


def _parse_name(v: str) -> str | None:
    v = str(v)
    return v if v and len(v) <= 100 and all(c.isalnum() or c in "-_." for c in v) else None


PARSERS = {"view": _parse_name, "run": _parse_name, "a": _parse_int, "b": _parse_int,
           "t": _parse_t, "path": _parse_path, "sample": _parse_int}


def _store() -> dict[str, Any]:
    if _STORE not in st.session_state:
        st.session_state[_STORE] = {}
    return st.session_state[_STORE]


def load_from_url() -> None:
    """Read the URL's parameters into the kept state, once per browser session."""
    if st.session_state.get(_LOADED):
        return
    st.session_state[_LOADED] = True
    store = _store()
    for key, parse in PARSERS.items():
        if key in st.query_params:
            value = parse(st.query_params[key])
            if value is not None:
                store[key] = value


def get(key: str, default: Any = None) -> Any:
    return _store().get(key, default)


def set(key: str, value: Any) -> None:  # noqa: A001 (state.set reads well at the call site)
    if value is None:
        _store().pop(key, None)
    else:
        _store()[key] = value


def write_to_url() -> None:
    """Mirror the kept state into the URL (only the keys that changed)."""
    want = {k: (f"{v:.2f}" if k == "t" else str(v)) for k, v in _store().items() if k in PARSERS}
    have = {k: st.query_params[k] for k in st.query_params}
    if want != have:
        st.query_params.from_dict(want)


def seed_widget(widget_key: str, key: str, default: Any = None) -> None:
    """Before a widget is drawn: give it the kept value (widget state does not survive a
    page change; the kept state does)."""
    if widget_key not in st.session_state:
        value = get(key, default)
        if value is not None:
            st.session_state[widget_key] = value
