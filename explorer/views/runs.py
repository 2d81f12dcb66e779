"""Runs: every run in the runs folder; choose the active one, compare, delete."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import charts, state
from explorer.services import cached, explore
from explorer.services import runs as run_service
from explorer.views import common
from trainer import TrainerError

COMPARED_COLUMNS = ("run", "data", "latent d", "beta", "sigma_dec", "epochs", "test ELBO", "recon", "KL",
                    "log p(x)", "active units")  # the runs table's columns shown under the comparison


def main() -> None:
    st.title("Runs")
    root = common.runs_root()
    summaries = run_service.list_runs(root)
    intro(root)
    if not summaries:
        st.info("No runs yet. Start one on the **Train** page.")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return
    rows = runs_table(summaries)
    compare_runs(root, summaries, rows)
    delete_a_run(root, summaries)


def intro(root: Path) -> None:
    if st.session_state.get("_deleted"):
        st.success(f"Deleted {st.session_state.pop('_deleted')}.")
    st.caption(f"The run folders in `{root}`, newest first. Numbers are test-set means of the last epoch. "
               + common.NATS_NOTE)


# -- the table of runs ---------------------------------------------------------------------------

def runs_table(summaries: list[run_service.RunSummary]) -> list[dict]:
    """One row per run (a click makes it the active run); returns the rows."""
    estimate = st.toggle("Estimate log p(x) for each finished run", value=True, key="estimate_log_px",
                         help=f"Importance sampling with K = {explore.EVAL_K} samples per test sample "
                              "(a lower bound that tightens with K); computed once per checkpoint.")
    rows = [run_service.table_row(s, evaluation(s) if estimate else None) for s in summaries]
    st.session_state["_runs_table_names"] = [s.name for s in summaries]
    st.dataframe(rows, key="runs_table", on_select=_on_pick, selection_mode="single-row", hide_index=True,
                 width="stretch")
    st.caption(f"Active run: **{state.get('run')}**. Select a row to make it the active run (or use the "
               "sidebar). sigma_dec is the decoder's noise scale (learned: its final value).")
    for s in summaries:
        if s.state == "failed":
            st.error(f"{s.name} failed: {s.message}")
    return rows


def evaluation(s: run_service.RunSummary) -> dict | None:
    """The test split's evaluation of a trained run (cached per checkpoint), or None; an error
    goes to the run's message."""
    if not s.trained:
        return None
    try:
        with st.spinner(f"Estimating log p(x) of {s.name}..."):
            return cached.evaluation(cached.checkpoint(s.path))
    except TrainerError as e:
        s.message = s.message or str(e)
        return None


def _on_pick() -> None:
    names = st.session_state.get("_runs_table_names", [])
    try:
        rows = st.session_state["runs_table"]["selection"]["rows"]
    except (KeyError, TypeError):
        return
    if rows and 0 <= rows[0] < len(names):
        state.set("run", names[rows[0]])


# -- comparing runs ------------------------------------------------------------------------------

def compare_runs(root: Path, summaries: list[run_service.RunSummary], rows: list[dict]) -> None:
    """The chosen runs' curves of one term on one split, and their table rows."""
    st.subheader("Compare runs")
    names = [s.name for s in summaries if s.epoch > 0]
    if len(names) < 1:
        st.caption("Runs appear here once they have finished an epoch.")
        return
    default = [n for n in names if any(s.name == n and s.trained for s in summaries)][:2]
    picked = st.multiselect("Runs to compare", names, default=default, key="compare_runs")
    c1, c2 = st.columns(2)
    term = c1.radio("Term", ["elbo", "recon", "kl"], key="compare_term", horizontal=True,
                    format_func=lambda t: {"elbo": "ELBO", "recon": "recon", "kl": "-KL"}[t])
    split = c2.radio("Split", ["test", "train"], key="compare_split", horizontal=True)
    if not picked:
        return
    curves = {}
    for name in picked:
        m = charts.metrics_arrays(run_service.read_metrics(root / name))
        curves[name] = (m["epoch"], m[f"{split}_{term}"])
    st.plotly_chart(charts.compare_curves(curves, term, split), key="compare_chart")
    st.caption("One line per run. " + common.NATS_NOTE + " (-KL is drawn, so higher is better too.)")
    st.dataframe([{k: v for k, v in r.items() if k in COMPARED_COLUMNS} for r in rows if r["run"] in picked],
                 hide_index=True, key="compare_table", width="stretch")


# -- deleting a run ------------------------------------------------------------------------------

def delete_a_run(root: Path, summaries: list[run_service.RunSummary]) -> None:
    """A run to delete, and a confirmation before its folder goes."""
    st.subheader("Delete a run")
    c1, c2 = st.columns([3, 2])
    name = c1.selectbox("Run to delete", [s.name for s in summaries], key="delete_name")
    c2.write("")
    if c2.button("Delete run...", key="delete_run", icon=":material/delete:"):
        st.session_state["_pending_delete"] = name
    pending = st.session_state.get("_pending_delete")
    if pending:
        confirm_delete(root, pending)


def confirm_delete(root: Path, pending: str) -> None:
    st.warning(f"Delete **{pending}** and every file in its folder? This cannot be undone.")
    c1, c2, _ = st.columns([2, 2, 4])
    if c1.button(f"Yes, delete {pending}", key="confirm_delete", type="primary"):
        st.session_state.pop("_pending_delete", None)
        try:
            run_service.delete_run(root, pending)
        except TrainerError as e:
            st.error(str(e))
        else:
            if state.get("run") == pending:
                state.set("run", None)
            st.session_state["_deleted"] = pending
            st.rerun()
    if c2.button("Keep it", key="cancel_delete"):
        st.session_state.pop("_pending_delete", None)
        st.rerun()


if __name__ == "__main__":
    main()
