"""Runs: every run in the runs folder; choose the active one, compare, delete."""

from __future__ import annotations

import streamlit as st

from explorer import charts, state
from explorer.services import explore
from explorer.services import runs as run_service
from explorer.views import common
from trainer import TrainerError


def _on_pick() -> None:
    names = st.session_state.get("_runs_table_names", [])
    try:
        rows = st.session_state["runs_table"]["selection"]["rows"]
    except (KeyError, TypeError):
        return
    if rows and 0 <= rows[0] < len(names):
        state.set("run", names[rows[0]])


def main() -> None:
    st.title("Runs")
    root = common.runs_root()
    summaries = run_service.list_runs(root)
    if st.session_state.get("_deleted"):
        st.success(f"Deleted {st.session_state.pop('_deleted')}.")
    st.caption(f"The run folders in `{root}`, newest first. Numbers are test-set means of the last epoch. "
               + common.NATS_NOTE)
    if not summaries:
        st.info("No runs yet. Start one on the **Train** page.")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return

    estimate = st.toggle("Estimate log p(x) for each finished run", value=True, key="estimate_log_px",
                         help=f"Importance sampling with K = {explore.EVAL_K} samples per test sample "
                              "(a lower bound that tightens with K); computed once per checkpoint.")
    rows = []
    for s in summaries:
        evaluation = None
        if estimate and s.trained:
            try:
                with st.spinner(f"Estimating log p(x) of {s.name}..."):
                    evaluation = explore.cached_evaluation(s.path)
            except TrainerError as e:
                s.message = s.message or str(e)
        rows.append(run_service.table_row(s, evaluation))
    st.session_state["_runs_table_names"] = [s.name for s in summaries]
    st.dataframe(rows, key="runs_table", on_select=_on_pick, selection_mode="single-row", hide_index=True,
                 width="stretch")
    st.caption(f"Active run: **{state.get('run')}**. Select a row to make it the active run (or use the "
               "sidebar). sigma_dec is the decoder's noise scale (learned: its final value).")
    for s in summaries:
        if s.state == "failed":
            st.error(f"{s.name} failed: {s.message}")

    st.subheader("Compare runs")
    with_curves = [s for s in summaries if s.epoch > 0]
    names = [s.name for s in with_curves]
    if len(names) < 1:
        st.caption("Runs appear here once they have finished an epoch.")
    else:
        default = [n for n in names if any(s.name == n and s.trained for s in summaries)][:2]
        picked = st.multiselect("Runs to compare", names, default=default, key="compare_runs")
        c1, c2 = st.columns(2)
        term = c1.radio("Term", ["elbo", "recon", "kl"], key="compare_term", horizontal=True,
                        format_func=lambda t: {"elbo": "ELBO", "recon": "recon", "kl": "-KL"}[t])
        split = c2.radio("Split", ["test", "train"], key="compare_split", horizontal=True)
        if picked:
            curves = {}
            for name in picked:
                m = charts.metrics_arrays(run_service.read_metrics(root / name))
                curves[name] = (m["epoch"], m[f"{split}_{term}"])
            st.plotly_chart(charts.compare_curves(curves, term, split), key="compare_chart")
            st.caption("One line per run. " + common.NATS_NOTE + " (-KL is drawn, so higher is better too.)")
            st.dataframe([{k: v for k, v in r.items() if k in (
                "run", "data", "latent d", "beta", "sigma_dec", "epochs", "test ELBO", "recon", "KL",
                "log p(x)", "active units")} for r in rows if r["run"] in picked],
                hide_index=True, key="compare_table", width="stretch")

    st.subheader("Delete a run")
    c1, c2 = st.columns([3, 2])
    name = c1.selectbox("Run to delete", [s.name for s in summaries], key="delete_name")
    c2.write("")
    if c2.button("Delete run...", key="delete_run", icon=":material/delete:"):
        st.session_state["_pending_delete"] = name
    pending = st.session_state.get("_pending_delete")
    if pending:
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
