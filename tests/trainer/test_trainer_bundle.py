"""A run taken away and brought back (trainer/bundle.py; issue 15): export -> import gives the
same run, a bundle is checked as an upload (each bad one exits 2 with one line and writes
nothing), and encode writes the codes as CSV."""

from __future__ import annotations

import csv
import io
import json
import pickle
import zipfile

import torch

from tests.trainer.test_trainer_cli import assert_user_error
from trainer import load_run
from trainer.elbo import evaluate


def exported(cli, run_dir, tmp_path):
    out = tmp_path / "bundle.zip"
    result = cli("export", run_dir, "--out", out)
    assert result.status == 0, result.stderr
    return out


def rewritten(bundle, out, replace=None, add=None):
    """A copy of the zip `bundle` with some members' bytes replaced and others added."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            name = info.filename.split("/", 1)[1]
            dst.writestr(info, replace.get(name, src.read(info)))
        for name, data in add.items():
            dst.writestr(name, data)
    return out


def test_export_then_import_into_another_runs_folder_gives_the_same_eval(cli, table_runs, tmp_path):
    bundle = exported(cli, table_runs["iris"], tmp_path)
    names = zipfile.ZipFile(bundle).namelist()
    assert all(n.startswith("iris/") and n.endswith((".json", ".jsonl", ".safetensors")) for n in names)
    assert {"iris/config.json", "iris/model.safetensors", "iris/standardize.json", "iris/data.json"} <= set(names)
    runs = tmp_path / "elsewhere"
    runs.mkdir()
    result = cli("import", bundle, "--runs", runs)
    assert result.status == 0, result.stderr
    assert [p.name for p in runs.iterdir()] == ["iris"]
    args = ("--json", "--threads", "1", "--k", "100", "--device", "cpu")
    original, imported = cli("eval", table_runs["iris"], *args), cli("eval", runs / "iris", *args)
    assert original.status == imported.status == 0
    assert json.loads(original.stdout) == json.loads(imported.stdout)
    assert load_run(runs / "iris").data_info == load_run(table_runs["iris"]).data_info
    # the same name again is refused, the run already there is kept
    again = cli("import", bundle, "--runs", runs)
    assert_user_error(again, "already exists")
    assert [p.name for p in runs.iterdir()] == ["iris"]


def assert_refused(cli, bundle, runs, *fragments):
    result = cli("import", bundle, "--runs", runs)
    assert_user_error(result, *fragments)
    assert list(runs.iterdir()) == []  # nothing written, no temporary folder left


def test_a_member_that_escapes_the_folder_is_refused(cli, table_runs, tmp_path):
    bundle = exported(cli, table_runs["iris"], tmp_path)
    runs = tmp_path / "runs" / "inner"
    runs.mkdir(parents=True)
    for evil in ("iris/../../evil.json", "../evil.json", "/tmp/evil.json", "iris/sub/evil.json"):
        bad = rewritten(bundle, tmp_path / "bad.zip", add={evil: b"{}"})
        assert_refused(cli, bad, runs, "leaves the folder")
    assert not (tmp_path / "runs" / "evil.json").exists() and not (tmp_path / "evil.json").exists()


def test_a_pickle_renamed_model_safetensors_is_refused(cli, table_runs, tmp_path):
    bundle = exported(cli, table_runs["iris"], tmp_path)
    weights = {k: v for k, v in load_run(table_runs["iris"]).model.state_dict().items()}
    evil = pickle.dumps(weights, protocol=4)
    assert evil[:1] == b"\x80"
    bad = rewritten(bundle, tmp_path / "bad.zip", replace={"model.safetensors": evil})
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused(cli, bad, runs, "model.safetensors", "not a safetensors file")


def test_an_oversized_bundle_is_refused(cli, table_runs, tmp_path, monkeypatch):
    bundle = exported(cli, table_runs["iris"], tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("VAE_MAX_BUNDLE_BYTES", str(bundle.stat().st_size - 1))
    assert_refused(cli, bundle, runs, "more than the limit")
    # a small zip whose members unpack to more than the limit (a zip bomb) is refused too
    monkeypatch.setenv("VAE_MAX_BUNDLE_BYTES", str(bundle.stat().st_size + 20_000))
    bomb = rewritten(bundle, tmp_path / "bomb.zip")
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("iris/zeros.json", b" " * (4 * bundle.stat().st_size) + b"{}")
    assert bomb.stat().st_size < bundle.stat().st_size + 20_000  # the zip itself is within the limit
    assert_refused(cli, bomb, runs, "unpacks to", "more than the limit")


def test_a_checkpoint_that_does_not_match_its_config_is_refused(cli, table_runs, tmp_path):
    bundle = exported(cli, table_runs["iris"], tmp_path)
    config = json.loads(zipfile.ZipFile(bundle).read("iris/config.json"))
    config["model"]["hidden"] = [64, 32]  # weights of [256, 128] do not fit
    bad = rewritten(bundle, tmp_path / "bad.zip", replace={"config.json": json.dumps(config).encode()})
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused(cli, bad, runs, "does not check out", "model.safetensors")
    # and a damaged standardisation
    bad = rewritten(bundle, tmp_path / "bad2.zip", replace={"standardize.json": b'{"mean": [1], "scale": [0]}'})
    assert_refused(cli, bad, runs, "standardize.json")


def test_not_a_zip_and_a_missing_runs_folder_are_refused(cli, table_runs, tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip at all")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused(cli, tmp_path / "x.zip", runs, "not a zip file")
    bundle = exported(cli, table_runs["iris"], tmp_path)
    assert_user_error(cli("import", bundle, "--runs", tmp_path / "nowhere"), "no such runs folder")
    assert not (tmp_path / "nowhere").exists()


def test_encode_writes_codes_labels_and_elbo_terms_per_sample(cli, table_runs, tmp_path):
    out = tmp_path / "codes.csv"
    result = cli("encode", table_runs["iris"], "--out", out, "--k", "50")
    assert result.status == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    run = load_run(table_runs["iris"])
    data = run.load_data()
    assert len(rows) == len(data.x_test)
    assert list(rows[0]) == ["sample", "mu_1", "mu_2", "logvar_1", "logvar_2", "target", "elbo", "recon", "kl",
                             "log_px", "log_px_se"]
    q = run.encode(data.x_test)
    mu = torch.tensor([[float(r["mu_1"]), float(r["mu_2"])] for r in rows])
    logvar = torch.tensor([[float(r["logvar_1"]), float(r["logvar_2"])] for r in rows])
    torch.testing.assert_close(mu, q.mu)
    torch.testing.assert_close(logvar, q.logvar.expand_as(q.mu))
    assert [r["target"] for r in rows] == [data.class_names[int(v)] for v in data.y_test[:, 0]]
    ev = evaluate(run.model, data.x_test, 1, 0, 500, k=50, keep_per_sample=True)
    for key in ("elbo", "recon", "kl", "log_px"):
        got = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
        torch.testing.assert_close(got, ev.per_sample[key].double())
    elbo, kl = (torch.tensor([float(r[key]) for r in rows]) for key in ("elbo", "kl"))
    recon = torch.tensor([float(r["recon"]) for r in rows])
    torch.testing.assert_close(elbo, recon - kl)
