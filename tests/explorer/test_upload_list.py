"""Uploads a person can manage (issue 15, item 5), on real files: the same content stored
once, repeats inside one upload dropped, a list with sizes and the runs using each, Delete
refused while a run uses it, and a zip of one folder per class read with those classes."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from explorer.services import uploads
from trainer import TrainerError, load_dataset


def png(seed: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def csv_bytes(rows: int = 40, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(rows, 3))
    lines = ["a,b,c,label"] + [f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{i % 2}" for i, r in enumerate(x)]
    return ("\n".join(lines) + "\n").encode()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_the_same_content_is_stored_once(tmp_path):
    first = uploads.save_upload(tmp_path, [("table.csv", csv_bytes())])
    again = uploads.save_upload(tmp_path, [("table.csv", csv_bytes())])
    assert not first.reused and again.reused and again.spec == first.spec
    other = uploads.save_upload(tmp_path, [("table.csv", csv_bytes(seed=1))])  # same name, new content
    assert not other.reused and other.spec != first.spec
    assert sorted(p.name for p in uploads.list_uploads(tmp_path)) == ["table-2.csv", "table.csv"]

    images = [(f"{i}.png", png(i)) for i in range(4)]
    a = uploads.save_upload(tmp_path, images)
    b = uploads.save_upload(tmp_path, list(reversed(images)) + images[:2])  # another order, two picked twice
    assert b.reused and b.spec == a.spec and a.n_samples == 4
    assert len(list((tmp_path / "uploads" / a.name).iterdir())) == 4


def test_a_replaced_upload_is_kept_when_it_was_uploaded_again(tmp_path):
    """Two students upload the same table; one replaces it with another file: the copy the
    other one is about to train on stays. A replaced upload nobody else sent is deleted."""
    mine = uploads.save_upload(tmp_path, [("table.csv", csv_bytes())])
    theirs = uploads.save_upload(tmp_path, [("table.csv", csv_bytes())])
    assert theirs.reused and theirs.spec == mine.spec
    assert uploads.discard_replaced(tmp_path, mine.name) is False
    assert (tmp_path / "uploads" / "table.csv").exists()
    alone = uploads.save_upload(tmp_path, [("other.csv", csv_bytes(seed=2))])
    assert uploads.discard_replaced(tmp_path, alone.name) is True
    assert [p.name for p in uploads.list_uploads(tmp_path)] == ["table.csv"]


def test_the_list_sizes_and_delete_refused_while_a_run_uses_it(tmp_path, digits_run):
    data = csv_bytes()
    saved = uploads.save_upload(tmp_path, [("table.csv", data)])
    [row] = uploads.stored_uploads(tmp_path)
    assert (row.name, row.bytes, row.used_by) == ("table.csv", len(data), [])

    run = tmp_path / "on-table"  # a run trained on the upload (a copy of a real run, its data set changed)
    shutil.copytree(digits_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = saved.spec + ":label=label"
    (run / "config.json").write_text(json.dumps(cfg))
    assert uploads.stored_uploads(tmp_path)[0].used_by == ["on-table"]
    with pytest.raises(TrainerError, match="on-table"):
        uploads.delete_upload(tmp_path, "table.csv")
    assert (tmp_path / "uploads" / "table.csv").read_bytes() == data

    shutil.rmtree(run)
    uploads.delete_upload(tmp_path, "table.csv")
    assert uploads.stored_uploads(tmp_path) == []
    assert not uploads.save_upload(tmp_path, [("table.csv", data)]).reused  # the index forgot it
    with pytest.raises(TrainerError, match="no upload named"):
        uploads.delete_upload(tmp_path, "../table.csv")


@pytest.mark.parametrize("top", ["", "pets/"])
def test_a_zip_of_one_folder_per_class(tmp_path, top):
    members = {f"{top}{cls}/{i}.png": png(10 * k + i) for k, cls in enumerate(("cat", "dog")) for i in range(3)}
    saved = uploads.save_upload(tmp_path, [("pets.zip", zipped(members))])
    folder = tmp_path / "uploads" / saved.name
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    data = load_dataset(saved.spec, 0)
    labels = np.concatenate([data.y_train, data.y_test])[:, 0]
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1] and saved.label_names == ["folder"]


def test_a_zip_mixing_loose_images_and_class_folders_is_refused(tmp_path):
    members = {"cat/1.png": png(1), "cat/2.png": png(2), "stray.png": png(3)}
    with pytest.raises(TrainerError, match="some images are in class folders and some are not .*'stray.png'"):
        uploads.save_upload(tmp_path, [("mixed.zip", zipped(members))])
    assert uploads.list_uploads(tmp_path) == []
