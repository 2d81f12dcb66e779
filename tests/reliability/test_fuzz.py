"""Property tests: whatever a user types or a file holds, the parsers and loaders give a
valid result or the project's own TrainerError, never another exception (and never hang
or allocate without bound: sizes are checked before anything is generated or read)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from trainer import RunConfig, TrainerError
from trainer import checkpoints
from trainer import runs as runs_mod
from trainer.data import BUILTINS, Dataset, load_dataset, parse_spec
from trainer.run_names import check_run_name, safe_run_path

# Derandomized: the same examples on every run and every machine (a CI failure reproduces).
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _subnormal_floats():
    """trainer.train.set_threads turns on flush-to-zero for the whole process (for speed);
    an earlier test in this process may have called it. Hypothesis needs IEEE subnormals."""
    torch.set_flush_denormal(False)
    yield

# -- data specs ---------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=300))
def test_parse_spec_any_text(spec):
    try:
        name, options = parse_spec(spec)
    except TrainerError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(name, str) and name
    assert all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in options.items())


_OPTION_KEYS = ["n", "d", "k", "sigma", "radius", "seed", "size", "test", "label", "x", ""]
_small_or_huge_int = st.one_of(st.integers(-3, 300), st.integers(10**7, 10**40))
_values = st.one_of(
    _small_or_huge_int.map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "1_0", "", " ", "=", ",", "٣", "1e-400", "True"]),
    st.text(max_size=12),
)


@st.composite
def builtin_specs(draw) -> str:
    name = draw(st.sampled_from(list(BUILTINS)))
    items = draw(st.lists(st.tuples(st.one_of(st.sampled_from(_OPTION_KEYS), st.text(max_size=6)), _values),
                          max_size=4))
    if not items and draw(st.booleans()):
        return name
    joiner = draw(st.sampled_from([",", ", ", ",,"]))
    return name + ":" + joiner.join(f"{k}={v}" for k, v in items)


@FUZZ
@given(builtin_specs())
def test_load_dataset_on_generated_builtin_specs(spec):
    # the fuzzing keeps valid sizes small (n <= 300); absurd ones must be refused up front
    try:
        data = load_dataset(spec, seed=0)
    except TrainerError as e:
        assert "\n" not in str(e)
        event("refused")
        return
    event("loaded")
    assert isinstance(data, Dataset)
    assert len(data.x_train) >= 1 and len(data.x_test) >= 1
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()


@FUZZ
@given(st.text(max_size=200))
def test_load_dataset_on_arbitrary_text(spec):
    with tempfile.TemporaryDirectory() as empty:
        cwd = os.getcwd()
        os.chdir(empty)  # relative names resolve in an empty folder
        try:
            try:
                name, _ = parse_spec(spec)
            except TrainerError:
                return
            assume(name in BUILTINS or not os.path.exists(name))  # no scanning of real folders such as "/"
            try:
                load_dataset(spec, seed=0)
            except TrainerError as e:
                assert "\n" not in str(e)
        finally:
            os.chdir(cwd)


def test_absurd_builtin_sizes_are_refused_before_generating():
    for spec in ("shapes:n=2000000,size=256", "linear-gaussian:d=10000,n=10000000"):
        with pytest.raises(TrainerError, match="more than the limit"):
            load_dataset(spec)


# -- config.json --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25)


def _check_config(d) -> None:
    try:
        cfg = RunConfig.from_dict(d)
    except TrainerError as e:
        assert "\n" not in str(e)
        event("config refused")
        return
    event("config valid")
    assert isinstance(cfg, RunConfig)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # round trip
    if cfg.data_shape:  # the architecture is rebuilt on the meta device: no memory, whatever the sizes
        try:
            checkpoints._skeleton(cfg)
            event("model built")
        except TrainerError as e:
            assert "\n" not in str(e)
            event("model refused")


@FUZZ
@given(json_values)
def test_config_from_arbitrary_json(d):
    _check_config(d)


_VALID = RunConfig(data="digits", data_shape=[1, 8, 8]).to_dict()
_FIELDS = [(None, k) for k in _VALID] + [(s, k) for s in ("model", "train") for k in _VALID[s]]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(_FIELDS), json_values), min_size=1, max_size=3))
def test_config_with_fields_replaced_by_arbitrary_json(edits):
    d = json.loads(json.dumps(_VALID))
    for (section, key), value in edits:
        (d[section] if section and isinstance(d.get(section), dict) else d)[key] = value
    _check_config(d)


@FUZZ
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=4), st.sampled_from(["mlp", "conv", "linear"]),
       st.lists(st.integers(1, 65536), min_size=1, max_size=4), st.integers(1, 4096))
def test_any_valid_architecture_builds_on_meta(shape, arch, hidden, latent_dim):
    d = json.loads(json.dumps(_VALID))
    d["data_shape"], d["model"]["arch"], d["model"]["hidden"], d["model"]["latent_dim"] = shape, arch, hidden, latent_dim
    _check_config(d)


# -- files in a run folder -------------------------------------------------------------------------

_RUN = tempfile.mkdtemp(prefix="fuzz-run-")


def _valid_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)},
                metadata={"train_state": '{"epoch": 1, "step": 2}'})


@st.composite
def mutated(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "replace-length"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated(_valid_safetensors())))
def test_safetensors_loader_on_arbitrary_bytes(data):
    path = Path(_RUN) / "model.safetensors"
    path.write_bytes(data)
    expected = {"a": ((2, 3), torch.float32), "b": ((4,), torch.float32)}
    for exp in (None, expected):
        try:
            tensors = checkpoints.load_safetensors(path, "model.safetensors", exp)
        except TrainerError as e:
            assert "\n" not in str(e)
            continue
        assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    checkpoints.safetensors_metadata(path)
    checkpoints._saved_at(path)


@FUZZ
@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode())))
def test_status_metrics_and_train_state_readers_on_arbitrary_bytes(data):
    run = Path(_RUN)
    for name in ("status.json", "metrics.jsonl", "train_state.json"):
        (run / name).write_bytes(data)
    status = runs_mod.read_status_dead_as_failed(run)
    assert status is None or (isinstance(status, dict) and status["state"] in runs_mod.STATES)
    assert all(isinstance(r, dict) for r in runs_mod.read_metrics(run))
    try:
        ts = checkpoints.read_train_state(run)
    except TrainerError:
        return
    assert isinstance(ts["epoch"], int) and isinstance(ts["step"], int)


# -- run names ------------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=120))
def test_run_names_any_text(name):
    root = Path(_RUN) / "runs"
    try:
        checked = check_run_name(name)
    except TrainerError as e:
        assert "\n" not in str(e)
        return
    path = safe_run_path(root, checked)
    assert path.parent == root.resolve() and path.name == name


# -- uploads --------------------------------------------------------------------------------------

def _valid_files() -> dict[str, bytes]:
    """One valid file of each kind the upload path takes (built once)."""
    import gzip
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    def png(seed):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    npz, npy, zipped = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.savez_compressed(npz, x=np.arange(12.0).reshape(4, 3), y=np.arange(4))
    np.save(npy, np.arange(12, dtype=np.float32).reshape(3, 4))
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"a/{i}.png", png(i))
    idx = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(8))
    return {"data.npz": npz.getvalue(), "data.npy": npy.getvalue(), "photos.zip": zipped.getvalue(),
            "t.csv": b"a,b\n1,2\n3,4\n", "img.png": png(7), "train-images-idx3-ubyte": idx,
            "train-images-idx3-ubyte.gz": gzip.compress(idx)}


VALID_UPLOADS = _valid_files()
UPLOAD_NAMES = list(VALID_UPLOADS) + ["x.jpg", "x.jpeg", "x.txt", "x", "x.NPZ"]


@st.composite
def uploads(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(UPLOAD_NAMES))
    source = VALID_UPLOADS.get(name) if draw(st.booleans()) else None  # mostly the file its name promises
    source = source or draw(st.sampled_from(list(VALID_UPLOADS.values())))
    data = draw(st.one_of(st.binary(max_size=400), mutated(source), st.just(source)))
    return name, data


@FUZZ
@given(uploads())
def test_upload_validator_on_arbitrary_files(upload):
    from explorer.services.upload_checks import UploadLimits, check_upload

    name, data = upload
    try:
        kind = check_upload(name, data, UploadLimits(max_unpacked_bytes=1 << 20))
    except TrainerError as e:
        assert "\n" not in str(e)
        event("refused")
        return
    event(f"accepted {kind}")
    assert kind in ("npz", "npy", "csv", "idx", "idx.gz", "image", "images.zip")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(uploads(), min_size=1, max_size=3))
def test_app_upload_path_on_arbitrary_files(files):
    """explorer's save_upload: a saved data set or a TrainerError; a refusal leaves nothing."""
    from explorer.services import uploads as upload_service

    with tempfile.TemporaryDirectory() as root:
        try:
            saved = upload_service.save_upload(Path(root), files)
        except TrainerError as e:
            assert "\n" not in str(e)
            left = list((Path(root) / "uploads").iterdir()) if (Path(root) / "uploads").exists() else []
            assert left == [], left
            event("refused")
            return
        event("saved")
        assert Path(saved.spec).exists() and saved.n_samples >= 2
