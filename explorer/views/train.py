"""Train: settings for a new run, one Train button, Retrain, and the live job."""

from __future__ import annotations

import os
import re

import streamlit as st

from explorer import state
from explorer.services import jobs
from explorer.services import runs as run_service
from explorer.services import uploads
from explorer.views import common
from explorer.views.latent_map import live_map
from trainer import ModelConfig, RunConfig, TrainConfig, TrainerError
from trainer.data import DATASETS, options_help
from trainer.likelihoods import LIKELIHOODS
from trainer.model import ARCHITECTURES


def data_choices(root) -> dict[str, str]:
    """Data set choices: spec -> label shown in the form."""
    out = {name: f"{name}: {builtin.help}" for name, builtin in DATASETS.items()}
    for p in uploads.list_uploads(root):
        out[str(p)] = f"upload: {p.name}"
    return out


def _handle_upload(root) -> None:
    """The uploader changed: check and save what it holds now as one data set. It replaces the
    data set this session uploaded before (if no run and no other upload uses it); removing the file clears the
    message about it."""
    files = st.session_state.get("upload_files") or []
    if not files:
        st.session_state.pop("_upload_result", None)
        return
    try:
        saved = uploads.save_upload(root, [(f.name, f.getvalue()) for f in files])
    except TrainerError as e:
        st.session_state["_upload_result"] = ("error", str(e))
        return
    pending = st.session_state.get("_pending_upload")
    if pending and pending != saved.name:
        uploads.discard_replaced(root, pending)  # replaced by the new one (kept if others use it)
    st.session_state["_pending_upload"] = None if saved.reused else saved.name
    st.session_state["_upload_result"] = (
        "ok", ("Already stored as " if saved.reused else "Saved ") + f"{saved.name}: {saved.n_samples} samples of "
              f"shape {list(saved.shape)}" + (" (images)" if saved.is_image else "")
              + (f", labels: {', '.join(saved.label_names)}" if saved.label_names else "") + ".")
    st.session_state["train_data"] = saved.spec


def config_from_form(v: dict) -> RunConfig:
    """The RunConfig the form describes; raises TrainerError naming a bad field."""
    try:
        hidden = [int(h) for h in str(v["hidden"]).replace(" ", "").split(",") if h]
    except ValueError:
        raise TrainerError(f"hidden sizes must be integers separated by commas, e.g. 512,256, not {v['hidden']!r}") \
            from None
    data = v["data"] + (f":{v['options'].strip()}" if v.get("options", "").strip() else "")
    cfg = RunConfig(
        data=data,
        model=ModelConfig(arch=v["arch"], hidden=hidden or ModelConfig().hidden, latent_dim=int(v["latent_dim"]),
                          likelihood=v["likelihood"],
                          sigma_dec="learned" if v["sigma_mode"] == "learned" else float(v["sigma_value"])),
        train=TrainConfig(epochs=int(v["epochs"]), batch_size=int(v["batch_size"]), lr=float(v["lr"]),
                          beta=float(v["beta"]), kl_warmup=int(v["kl_warmup"]), mc_samples=int(v["mc_samples"]),
                          seed=int(v["seed"]), world_size=int(v.get("processes", 1))))
    cfg.validate()
    return cfg


def launch(root, name: str | None, cfg: RunConfig) -> None:
    """Start a job and make it the active run; says in the page why not if it cannot."""
    name = (name or "").strip() or jobs.suggest_name(root, cfg)
    try:
        jobs.start(root, name, cfg, jobs.train_threads())
    except jobs.JobBusy as e:
        st.info(f"Not started: {e}.")
        return
    except (TrainerError, OSError) as e:
        st.error(f"Could not start training: {e}")
        return
    state.set("run", name)
    st.session_state["_last_job"] = name
    st.rerun()


def job_panel(root) -> None:
    """The job this session started last, or else any job running in the runs folder, or else
    the active run if it stopped part-way (failed or cancelled: so it can be resumed from a new
    session, e.g. after the browser or the server was closed)."""
    name = st.session_state.get("_last_job")
    summaries = run_service.list_runs(root)
    active = [s for s in summaries if s.state in jobs.ACTIVE]
    target = next((s for s in summaries if s.name == name), None)
    if target is None or (target.state not in jobs.ACTIVE and active):
        target = active[0] if active else target
    if target is None:
        target = next((s for s in summaries if s.name == state.get("run") and s.state in ("failed", "cancelled")),
                      None)
    if target is None:
        return
    st.subheader(f"Job: {target.name}")
    if target.state in jobs.ACTIVE:
        common.live_progress(str(target.path))
        live_map(str(target.path))  # the test codes' newest snapshot, as the latent space forms
    elif target.state == "done":
        st.success(f"{target.name} finished {target.epoch} epochs: test ELBO "
                   f"{run_service.fmt(target.final.get('test_elbo'))} nats per sample. "
                   "Explore it on the Latent map page.")
        st.page_link("views/latent_map.py", label="Open the latent map", icon=":material/scatter_plot:")
    elif target.state == "failed":
        st.error(f"Training {target.name} failed: {target.message}")
    elif target.state == "cancelled":
        st.warning(f"{target.name} was cancelled: {target.message or 'stopped by the user'}.")
    # Any stopped run with weights resumes, also one killed after its last epoch was saved
    # (all trained: the resumed job trains no epoch and marks it done).
    if target.state in ("failed", "cancelled") and (target.path / "model.safetensors").exists():
        lr = None
        all_trained = 0 < target.epochs <= target.epoch
        if target.config is not None and not all_trained:
            # A non-finite loss asks for a lower learning rate: offer a tenth of the run's.
            lowered = target.state == "failed" and "non-finite" in (target.message or "")
            run_lr = target.config.train.lr
            offered = min(max(run_lr / 10 if lowered else run_lr, 1e-7), 1.0)  # within the input's range
            lr = st.number_input("Learning rate for the rest of the run", min_value=1e-7, max_value=1.0,
                                 value=offered, step=1e-5, format="%.1e",
                                 key="resume_lr",
                                 help=f"The run trained at {run_lr:g}. Adam's state is kept; only its step "
                                      "size changes (recorded in the run's config.json).")
        label = f"Finish {target.name}: all {target.epochs} epochs are saved" if all_trained else \
            f"Resume {target.name} from its last saved epoch"
        if st.button(label, key="resume_run", icon=":material/play_arrow:"):
            try:
                jobs.resume(root, target.name, jobs.train_threads(), lr=lr)
            except (TrainerError, OSError) as e:
                st.error(f"Could not resume {target.name}: {e}")
            else:
                st.session_state["_last_job"] = target.name
                st.rerun()


def main() -> None:
    st.title("Train")
    root = common.runs_root()
    st.caption("Training runs as a separate process (`python -m trainer fit`) that writes into a run folder; "
               "this page follows it. You can leave the page or close the tab: the job keeps going.")
    job_panel(root)
    st.subheader("New run")
    upload_section(root)
    new_run_form(root)
    retrain_section(root)


UPLOAD_HELP = (".npz with an array x (and optional labels y), .npy, .csv (numbers; a column named label, y, "
               "class or target is used as labels), MNIST IDX files, several PNG/JPEG images, or a .zip of "
               "images: one folder per class (cat/1.png, dog/7.png) gives them those labels. "
               f"Up to {uploads.MAX_UPLOAD_MB} MB; checked by loading it on the server.")


def upload_section(root) -> None:
    """The user's own data: a file uploaded here is checked, saved as one data set and offered
    in the form; the stored uploads are listed with their sizes and can be deleted."""
    stored = uploads.stored_uploads(root)
    busy = any(st.session_state.get(k) for k in ("upload_files", "_upload_result", "_upload_deleted"))
    with st.expander("Use your own data (upload)", expanded=bool(stored) or busy):
        st.file_uploader("Data file(s)", key="upload_files", accept_multiple_files=True,
                         on_change=_handle_upload, args=(root,), help=UPLOAD_HELP)
        st.caption("One upload is one data set: a new file replaces the one uploaded before (unless a run "
                   "uses it), and the same content uploaded again reuses the stored copy.")
        result = st.session_state.get("_upload_result")
        if result:
            (st.success if result[0] == "ok" else st.error)(result[1])
        stored_upload_list(root, stored)


def stored_upload_list(root, stored: list[uploads.StoredUpload]) -> None:
    """One line per stored upload: name, size, the runs that use it, and Delete."""
    said = st.session_state.pop("_upload_deleted", None)
    if said:
        (st.success if said[0] == "ok" else st.error)(said[1])
    if not stored:
        return
    st.markdown(f"**Stored uploads** in `{uploads.UPLOADS}/` ({len(stored)})")
    for u in stored:
        c1, c2, c3 = st.columns([4, 4, 1], vertical_alignment="center")
        c1.markdown(f"`{u.name}` · {fmt_bytes(u.bytes)}")
        c2.caption(f"used by {', '.join(u.used_by)}" if u.used_by else "not used by a run")
        c3.button("Delete", key="delete_upload_" + re.sub(r"[^A-Za-z0-9_-]", "_", u.name), icon=":material/delete:",
                  on_click=_delete_upload, args=(root, u.name))


def _delete_upload(root, name: str) -> None:
    try:
        uploads.delete_upload(root, name)
    except TrainerError as e:
        st.session_state["_upload_deleted"] = ("error", f"Not deleted: {e}.")
        return
    if st.session_state.get("_pending_upload") == name:
        st.session_state["_pending_upload"] = None
    st.session_state["_upload_deleted"] = ("ok", f"Deleted the upload {name}.")


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def new_run_form(root) -> None:
    """Every setting of a new run and the Train button; a bad setting is a one-line error."""
    choices = data_choices(root)
    if st.session_state.get("train_data") not in choices:
        st.session_state["train_data"] = "digits"
    with st.form("train_form"):
        values = {**data_fields(choices), **model_fields(), **training_fields()}
        c1, c2 = st.columns([4, 1])
        name = c1.text_input("Run name", key="train_name", placeholder="automatic, e.g. digits-2d-2",
                             help="The run folder's name: letters, digits, '-', '_' and '.'.")
        values["processes"] = c2.number_input(
            "Processes", 1, max(1, os.cpu_count() or 1), 1, key="train_processes",
            help="Training processes on this machine (torch.distributed): each takes "
                 "a share of every batch; the same seed gives the same numbers.")
        submitted = st.form_submit_button("Train", type="primary", icon=":material/play_arrow:", key="train_submit")
    if submitted:
        try:
            cfg = config_from_form(values)
        except TrainerError as e:
            st.error(f"Check the settings: {e}")
        else:
            launch(root, name, cfg)


def data_fields(choices: dict[str, str]) -> dict:
    c1, c2 = st.columns([3, 2])
    data = c1.selectbox("Data set", list(choices), key="train_data", format_func=choices.get)
    options = c2.text_input("Data options", key="train_data_options", placeholder="e.g. k=8,sigma=0.3",
                            help=f"Options of a built-in, key=value separated by commas: {options_help()}.")
    return dict(data=data, options=options)


def model_fields() -> dict:
    """Architecture, hidden sizes, latent size and likelihood (from the registries); sigma_dec, beta
    and the KL warm-up on the row below."""
    c1, c2, c3, c4 = st.columns(4)
    v = dict(
        arch=c1.selectbox("Architecture", list(ARCHITECTURES), key="train_arch",
                          help="; ".join(f"{name}: {a.help}" for name, a in ARCHITECTURES.items()) + "."),
        hidden=c2.text_input("Hidden sizes (mlp)", ",".join(map(str, ModelConfig().hidden)), key="train_hidden",
                             help="Units per hidden layer of the encoder (the decoder mirrors them). "
                                  "The default suits digits; MNIST-sized images: e.g. 512,256."),
        latent_dim=c3.number_input("Latent size d", 1, 256, 2, key="train_latent_dim",
                                   help="The size of z; d = 2 draws the latent map without projection."),
        likelihood=c4.selectbox("Likelihood p(x|z)", list(LIKELIHOODS), key="train_likelihood",
                                help="; ".join(f"{name}: {lik.help}" for name, lik in LIKELIHOODS.items()) + "."),
    )
    c1, c2, c3, c4 = st.columns(4)
    v["sigma_mode"] = c1.radio("sigma_dec", ["learned", "fixed"], key="train_sigma_mode", horizontal=True,
                               help="The decoder's noise scale: learned with the rest, or fixed.")
    v["sigma_value"] = c2.number_input("Fixed sigma_dec", 0.001, 100.0, 0.1, step=0.01, format="%.3f",
                                       key="train_sigma_value")
    v["beta"] = c3.number_input("beta (KL weight)", 0.0, 100.0, 1.0, step=0.5, key="train_beta",
                                help="Weight of the KL in the training objective; the reported ELBO always uses 1.")
    v["kl_warmup"] = c4.number_input("KL warm-up epochs", 0, 10000, 0, key="train_kl_warmup",
                                     help="Epochs over which the KL weight rises from 0 to beta.")
    return v


def training_fields() -> dict:
    c1, c2, c3, c4, c5 = st.columns(5)
    return dict(
        mc_samples=c1.number_input("MC samples M", 1, 1000, 1, key="train_mc_samples",
                                   help="Samples of z per x in the reconstruction term (eq 1.31)."),
        epochs=c2.number_input("Epochs", 1, 100000, 100, key="train_epochs"),
        batch_size=c3.number_input("Batch size", 1, 100000, 128, key="train_batch_size"),
        lr=c4.number_input("Learning rate", 0.00001, 1.0, 0.001, step=0.0005, format="%.5f", key="train_lr"),
        seed=c5.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed",
                             help="Same seed, same data, same settings: the same numbers."),
    )


def retrain_section(root) -> None:
    """Retrain the active run with its own settings, with the same or a new seed."""
    st.subheader("Retrain the active run")
    active = common.active_summary()
    if active is None or active.config is None:
        st.caption("Choose a run in the sidebar to retrain it with the same settings.")
        return
    c = active.config
    st.caption(f"**{active.name}**: {c.data}, {c.model.arch}, d = {c.model.latent_dim}, {c.model.likelihood}, "
               f"sigma_dec {c.model.sigma_dec}, beta {c.train.beta:g}, {c.train.epochs} epochs, seed "
               f"{c.train.seed}. Retraining writes a new run folder; the old run is kept.")
    c1, c2 = st.columns([2, 3])
    seed_choice = c1.radio("Seed", ["same seed", "new seed"], key="retrain_seed", horizontal=True,
                           help="Same seed reproduces the same numbers; a new seed shows the run-to-run spread.")
    if c2.button(f"Retrain {active.name}", key="retrain", icon=":material/replay:"):
        cfg = RunConfig.from_dict(c.to_dict())
        if seed_choice == "new seed":
            cfg.train.seed = jobs.unused_seed(root, cfg)
        launch(root, jobs.suggest_name(root, cfg, base=f"{active.name}-seed{cfg.train.seed}"
                                       if seed_choice == "new seed" else f"{active.name}-retrain"), cfg)


if __name__ == "__main__":
    main()
