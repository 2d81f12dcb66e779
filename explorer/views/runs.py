"""Runs: every run in the runs folder; choose the active one, compare, delete."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import charts, state
from explorer.services import cached, explore, exports, uploads
from explorer.services import runs as run_service
from explorer.views import common
from trainer import TrainerError

COMPARED_COLUMNS = ("run", "data", "latent d", "beta", "sigma_dec", "seed", "epochs", "test ELBO", "recon", "KL",
                    "log p(x)", "active units")  # the runs table's columns shown under the comparison


def main() -> None:
    st.title("Runs")
    root = common.runs_root()
    summaries = run_service.list_runs(root)
    intro(root)
    if not summaries:
        if not common.runs_folder_problem():  # else the sidebar said why
            st.info("No runs yet. Start one on the **Train** page, or import one below.")
            st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
            import_a_run(root)
        return
    rows = runs_table(summaries)
    compare_runs(root, summaries, rows)
    results_out(root, summaries)
    delete_a_run(root, summaries)
    estimate_missing(summaries)


def intro(root: Path) -> None:
    if st.session_state.get("_deleted"):
        st.success(f"Deleted {st.session_state.pop('_deleted')}.")
    st.caption(f"The run folders in `{root}`, newest first. Numbers are test-set means of the last epoch. "
               + common.NATS_NOTE)


# -- the table of runs ---------------------------------------------------------------------------

def runs_table(summaries: list[run_service.RunSummary]) -> list[dict]:
    """One row per run (a click makes it the active run); returns the rows. log p(x) is read
    from each run folder (estimated once per checkpoint, see estimate_missing), so the table
    is drawn at once."""
    estimate = st.toggle("Estimate log p(x) for each finished run", value=True, key="estimate_log_px",
                         help=f"Importance sampling with K = {explore.EVAL_K} samples per test sample "
                              "(a lower bound that tightens with K); computed once per checkpoint and kept "
                              f"in the run folder ({run_service.EVALUATION_FILE}).")
    stored = {s.name: run_service.stored_evaluation(s.path) for s in summaries if estimate and s.trained}
    rows = [run_service.table_row(s, stored.get(s.name)) for s in summaries]
    names = [s.name for s in summaries]
    st.session_state["_runs_table_names"] = names
    key, selected = table_key(names)
    with st.container(key="runs_table"):
        st.dataframe(rows, key=key, on_select=lambda: _on_pick(key), selection_mode="single-row",
                     selection_default={"selection": {"rows": selected}}, hide_index=True, width="stretch")
    st.caption(f"Active run: **{state.get('run')}**. Select a row to make it the active run (or use the "
               "sidebar). sigma_dec is the decoder's noise scale (learned: its final value). "
               "log p(x) 'unreliable' says why its estimate cannot be trusted.")
    for s in summaries:
        if s.state == "failed":
            st.error(f"{s.name} failed: {s.message}")
    return rows


def table_key(names: list[str]) -> tuple[str, list[int]]:
    """The table's widget key and its ticked row: the active run's. The key names the rows and
    the active run, so that a new list (after a delete) or another active run (picked in the
    sidebar) draws a new table ticked on the active run, never a kept tick on a row that now
    holds another run."""
    import hashlib

    active = state.get("run")
    selected = [names.index(active)] if active in names else []
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:10]
    return f"runs_table_{digest}_{selected[0] if selected else 'none'}", selected


def estimate_missing(summaries: list[run_service.RunSummary]) -> None:
    """After the page is drawn: estimate log p(x) of the finished runs that have none for their
    checkpoint yet (once; kept in the run folder), then draw the page again."""
    if not st.session_state.get("estimate_log_px", True):
        return
    failed = st.session_state.setdefault("_log_px_failed", {})
    missing = [s for s in summaries if s.trained and run_service.stored_evaluation(s.path) is None
               and failed.get(str(s.path)) != run_service.checkpoint_key(s.path)]
    if not missing:
        return
    for s in missing:
        try:
            with st.spinner(f"Estimating log p(x) of {s.name} (once per checkpoint)..."):
                run_service.evaluation(s.path)
        except TrainerError as e:
            failed[str(s.path)] = run_service.checkpoint_key(s.path)
            st.error(f"Cannot estimate log p(x) of {s.name}: {e}")
            return
    st.rerun()


def _on_pick(key: str) -> None:
    names = st.session_state.get("_runs_table_names", [])
    try:
        rows = st.session_state[key]["selection"]["rows"]
    except (KeyError, TypeError):
        return
    if rows and 0 <= rows[0] < len(names):
        state.set("run", names[rows[0]])


# -- comparing runs ------------------------------------------------------------------------------

def compare_runs(root: Path, summaries: list[run_service.RunSummary], rows: list[dict]) -> None:
    """The chosen runs' curves of one term on one split, and their table rows. By default the
    active run and the other finished runs on its data set; a warning when the chosen runs'
    data differ (their ELBOs are then not comparable)."""
    st.subheader("Compare runs")
    names = [s.name for s in summaries if s.epoch > 0]
    if len(names) < 1:
        st.caption("Runs appear here once they have finished an epoch.")
        return
    by_name = {s.name: s for s in summaries}
    active = by_name.get(state.get("run"))
    picked = st.multiselect("Runs to compare", names, default=default_compared(summaries, active),
                            key=f"compare_runs_{active.name if active else ''}",
                            help="By default: the active run and the other finished runs on its data set.")
    c1, c2 = st.columns(2)
    term = c1.radio("Term", ["elbo", "recon", "kl"], key="compare_term", horizontal=True,
                    format_func=lambda t: {"elbo": "ELBO", "recon": "recon", "kl": "-KL"}[t])
    split = c2.radio("Split", ["test", "train"], key="compare_split", horizontal=True)
    if not picked:
        return
    data = {by_name[n].config.data if by_name[n].config else "?" for n in picked}
    if len(data) > 1:
        st.warning(f"These runs were trained on different data ({', '.join(sorted(data))}): their ELBOs are "
                   "log-likelihoods of different data and cannot be compared. Compare runs of one data set.")
    def figure():
        curves = {}
        for name in picked:
            m = charts.metrics_arrays(run_service.read_metrics(root / name))
            curves[name] = (m["epoch"], m[f"{split}_{term}"])
        return charts.compare_curves(curves, term, split)

    # Built once per choice and state of the runs' metrics.jsonl, shared by every session.
    key = ("compare_chart", str(root), term, split, tuple((name, common.file_signature(root / name / "metrics.jsonl"))
                                              for name in picked))
    common.chart(common.shared_figure(key, figure), key="compare_chart")
    st.caption("One line per run. " + common.NATS_NOTE + " (-KL is drawn, so higher is better too.)")
    st.dataframe([{k: v for k, v in r.items() if k in COMPARED_COLUMNS} for r in rows if r["run"] in picked],
                 hide_index=True, key="compare_table", width="stretch")


def default_compared(summaries: list[run_service.RunSummary], active: run_service.RunSummary | None,
                     most: int = 4) -> list[str]:
    """The active run, then the newest other finished runs on the same data set (at most `most`)."""
    if active is None or active.config is None:
        return [s.name for s in summaries if s.trained][:2]
    same = [s.name for s in summaries if s.trained and s.name != active.name and s.config is not None
            and s.config.data == active.config.data]
    return ([active.name] if active.epoch > 0 else []) + same[:most - 1]


# -- results out: the active run's codes, the whole run as a zip, a zip imported ------------------

def results_out(root: Path, summaries: list[run_service.RunSummary]) -> None:
    st.subheader("Results out")
    active = next((s for s in summaries if s.name == state.get("run")), None)
    if active is not None and active.trained:
        c1, c2 = st.columns(2)
        with c1:
            common.download_codes(cached.checkpoint(active.path), active.name, key="download_codes_runs")
        with c2:
            st.download_button(f"{active.name} as one zip", lambda: run_service.export_bundle(active.path),
                               file_name=f"{exports.file_stem(active.name)}.zip", mime="application/zip",
                               key="download_run_zip", icon=":material/download:", on_click="ignore",
                               help="The run folder (settings, weights, metrics) as one zip; "
                                    "`python -m trainer import FILE.zip --runs DIR` or the uploader below "
                                    "opens it on another machine.")
    else:
        st.caption("Choose a trained run (in the table or the sidebar) to download its results.")
    import_a_run(root)


def import_a_run(root: Path) -> None:
    st.file_uploader("Import a run (a zip exported from this app or `python -m trainer export`)", type=["zip"],
                     key="import_bundle", on_change=_import, args=(root,))
    # What the import of the file in the uploader said, as long as that file is there (the page
    # reruns on its own after an import, to estimate the new run's log p(x)), in this runs folder.
    said = st.session_state.get("_import_result")
    current = st.session_state.get("import_bundle")
    if said and current is not None and said[:2] == (current.file_id, str(root)):
        (st.success if said[2] == "ok" else st.error)(said[3])
    elif said:
        del st.session_state["_import_result"]  # the file was removed, or another runs folder is open


def _import(root: Path) -> None:
    f = st.session_state.get("import_bundle")
    if f is None:
        return
    try:
        name = run_service.import_bundle(root, f.name, f.getvalue(), uploads.MAX_UPLOAD_MB * 2**20)
    except TrainerError as e:
        st.session_state["_import_result"] = (f.file_id, str(root), "error", f"Not imported: {e}")
        return
    state.set("run", name)
    st.session_state["_import_result"] = (f.file_id, str(root), "ok", f"Imported {name}: it is now the active run.")


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
