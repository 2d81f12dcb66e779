"""VAE Latent Explorer: `python -m streamlit run explorer/app.py` from the repository root.

This file only sets up the page and routes: the sidebar (runs folder, active run), the
first start (a default training when the runs folder is empty) and one page per view in
explorer/views/. The views lay out widgets and call explorer/services/, which call the
trainer; figures come from explorer/charts.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run explorer/app.py` puts only explorer/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from explorer import state  # noqa: E402
from explorer.views import first_start  # noqa: E402  (torch-free; the pages' modules are imported in main)

VIEWS = Path(__file__).parent / "views"
PAGES = {  # URL path -> page; "view" in the URL names one of these keys
    "runs": dict(page="runs.py", title="Runs", icon=":material/folder_open:"),
    "train": dict(page="train.py", title="Train", icon=":material/model_training:"),
    "latent-map": dict(page="latent_map.py", title="Latent map", icon=":material/scatter_plot:"),
    "interpolate": dict(page="interpolate.py", title="Interpolate", icon=":material/linear_scale:"),
    "elbo": dict(page="elbo.py", title="ELBO breakdown", icon=":material/stacked_bar_chart:"),
    "inside-elbo": dict(page="inside_elbo.py", title="Inside the ELBO", icon=":material/functions:"),
    "generate": dict(page="generate.py", title="Generate", icon=":material/auto_awesome:"),
}


START_VIEW = "latent-map"


def main() -> None:
    st.set_page_config(page_title="VAE Latent Explorer", page_icon=":material/blur_on:", layout="wide")
    state.load_from_url()
    # Before the pages' imports: the first start's training process starts (and imports torch)
    # while this process imports torch, plotly and the trainer (1.5-3 s, the first run only).
    first_start.start()
    from explorer.views import common
    pages = {key: st.Page(VIEWS / p["page"], title=p["title"], icon=p["icon"], url_path=key)
             for key, p in PAGES.items()}
    # The root URL is a hidden page that opens the start view, so that every view has its
    # own path (/latent-map, /interpolate, ...) for links.
    home = st.Page(lambda: st.switch_page(pages[START_VIEW]), title="Home", url_path="home",
                   default=True, visibility="hidden")
    page = st.navigation([home, *pages.values()])
    view = next((key for key, p in pages.items() if p is page), None)
    wanted = state.get("view")
    if not st.session_state.get("_view_applied"):  # a link's ?view= opens that view once
        st.session_state["_view_applied"] = True
        if wanted in pages and wanted != view:
            st.switch_page(pages[wanted])
    if view is None:  # the root URL
        st.switch_page(pages[START_VIEW])
    state.set("view", view)

    common.freeze_startup_objects()
    common.start_memory_housekeeping()
    common.sidebar()
    state.write_to_url()
    try:
        page.run()
        state.write_to_url()
    except Exception as e:  # a bug must not show a traceback: log it, say it in one line
        logging.getLogger("explorer").exception("view %s failed", view)
        st.error(f"Something went wrong on this page ({type(e).__name__}: {str(e)[:200]}). "
                 "The run folders are unchanged; try another run or reload the page.")


main()
