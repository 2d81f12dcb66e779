"""Uploads through the app's upload path (explorer.services.uploads.save_upload), checked
on the server by content (explorer.services.upload_checks): wrong content behind a right extension, zip
bombs (by unpacked size and by file count), archives with escaping paths or links, CSVs
that are ragged, textual, NaN or absurdly wide, empty files and files over the size limit.
Each is refused with a one-line message; nothing is kept in the uploads folder, nothing is
written outside it, and nothing is ever unpickled."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.services import uploads
from explorer.services.upload_checks import UploadLimits, check_upload
from trainer import TrainerError
from trainer.formats import sniff

from .conftest import MakesMarker, assert_pickle_would_touch

# -- building files ------------------------------------------------------------------------------


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_bytes(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def png_bytes(seed: int, size=(8, 8), mode="L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def handmade_zip(members: list[tuple[str, bytes, int, int, int]], external_attr: int = 0) -> bytes:
    """A zip written byte by byte, so that it can say anything: members are (name, deflated
    data, uncompressed size as written in the headers, crc32, method)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, size, crc, method in members:
        offset = out.tell()
        raw_name = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                              len(raw_name), 0) + raw_name + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x0314, 20, 0, method, 0, 0x21, crc, len(data),
                                  size, len(raw_name), 0, 0, 0, 0, external_attr, offset) + raw_name)
    cd = central.getvalue()
    n = len(members)
    return out.getvalue() + cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cd), out.tell(), 0)


def zeros_deflate(megabytes: int, prefix: bytes = b"") -> bytes:
    """Raw deflate data that inflates to `prefix` then `megabytes` MiB of zeros, about 1 KB
    per MiB: one compressed MiB, flushed so that it can be repeated, then the final block.
    (Its CRC is left 0: the checks must refuse it long before a reader could compare it.)"""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + segment * megabytes + c.flush(zlib.Z_FINISH)


def gzip_wrap(deflated: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height 8-bit grey pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def idx_bytes(images: np.ndarray) -> bytes:
    return bytes([0, 0, 8, images.ndim]) + b"".join(struct.pack(">I", d) for d in images.shape) + \
        images.astype(np.uint8).tobytes()


DIGITS = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)

# -- the app's upload path ------------------------------------------------------------------------


def _tree(base: Path) -> dict[str, int]:
    return {str(p.relative_to(base)): p.stat().st_size for p in sorted(base.rglob("*"))}


def refused(tmp_path: Path, files: list[tuple[str, bytes]], *fragments: str) -> str:
    """save_upload refuses `files` with a one-line TrainerError naming the fragments, and
    leaves the runs folder (and everything around it) as it was."""
    root = tmp_path / "runs"
    (root / "uploads").mkdir(parents=True, exist_ok=True)
    before = _tree(tmp_path)
    with pytest.raises(TrainerError) as err:
        uploads.save_upload(root, files)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert _tree(tmp_path) == before, "a refused upload left something behind"
    return message


WRONG_CONTENT = {
    "png-named-npz": ("data.npz", png_bytes(0), "the name says zip but the content is a PNG image"),
    "text-named-npy": ("data.npy", b"1,2,3\n4,5,6\n", "the name says npy but the content is text"),
    "zip-named-png": ("a.png", zip_bytes({"x": b"1"}), "the name says image but the content is a zip archive"),
    "pickle-named-npy": ("data.npy", pickle.dumps({"x": [1, 2]}), "the content is a Python pickle"),
    "npz-named-csv": ("data.csv", npz_bytes(x=np.ones((4, 2))), "the name says text but the content is a zip"),
    "jpeg-named-csv": ("data.csv", jpeg_bytes(0), "the content is a JPEG image"),
    "random-named-gz": ("train-images-idx3-ubyte.gz", os.urandom(64), "the name says gzip"),
    "gzipped-csv-named-idx-gz": ("train-images-idx3-ubyte.gz", gzip.compress(b"1,2\n3,4\n"),
                                 "not an IDX file (bad magic number; the content is text)"),
    "exe-named-png": ("a.png", b"MZ\x90\x00" + os.urandom(60), "the name says image"),
    "unknown-extension": ("data.parquet", b"PAR1....", "unknown file type"),
}


@pytest.mark.parametrize("case", list(WRONG_CONTENT))
def test_wrong_content_behind_a_right_extension(case, tmp_path):
    name, data, fragment = WRONG_CONTENT[case]
    refused(tmp_path, [(name, data)], name, fragment)


def test_object_array_inside_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "MARKER"
    payload = np.array([MakesMarker(marker)], dtype=object)
    data = zip_bytes({"x.npy": npy_bytes(payload, allow_pickle=True)})
    refused(tmp_path, [("evil.npz", data)], "evil.npz[x]", "not plain numbers")
    refused(tmp_path, [("evil.npy", npy_bytes(payload, allow_pickle=True))], "not plain numbers")
    assert not marker.exists()
    assert_pickle_would_touch(pickle.dumps(MakesMarker(marker)), marker)  # control: the payload is real


def test_zip_bomb_by_unpacked_size(tmp_path):
    """1.1 GB of zeros in a 1 MB archive: refused while inflating, at 64 MB for one image
    file and at the 1 GB default for an archive in all, whatever the headers say."""
    bomb = handmade_zip([("big.png", zeros_deflate(1100), 1100 << 20, 0, 8)])
    assert len(bomb) < 2 << 20
    refused(tmp_path, [("photos.zip", bomb)], "photos.zip", "'big.png' unpacks to more than 64 MB", "zip bomb")
    # many images each under the per-file limit, together over the archive limit (small limits)
    pngs = {f"{i}.png": png_bytes(i, (64, 64)) for i in range(10)}
    limits = UploadLimits(max_unpacked_bytes=sum(map(len, pngs.values())) - 1, max_member_bytes=1 << 20)
    with pytest.raises(TrainerError, match="unpacks to more than"):
        check_upload("photos.zip", zip_bytes(pngs), limits)
    check_upload("photos.zip", zip_bytes(pngs), UploadLimits(max_unpacked_bytes=sum(map(len, pngs.values()))))


def test_zip_bomb_that_lies_about_its_size(tmp_path):
    """The headers say 100 bytes; the data inflates to 200 MB."""
    bomb = handmade_zip([("a.png", zeros_deflate(200), 100, 0, 8)])
    refused(tmp_path, [("photos.zip", bomb)], "photos.zip")


def test_npz_bomb(tmp_path):
    """A .npz whose x.npy header announces 400 bytes, then inflates to 1.1 GB of zeros; and
    one whose header announces more than the limit."""
    header = npy_bytes(np.zeros(100, np.float32))[:-400]
    bomb = handmade_zip([("x.npy", zeros_deflate(1100, prefix=header), 1100 << 20, 0, 8)])
    refused(tmp_path, [("data.npz", bomb)], "data.npz[x]", "more data than its header announces")
    big = io.BytesIO()
    np.lib.format.write_array_header_1_0(big, {"descr": "<f8", "fortran_order": False, "shape": (2**28,)})
    bomb = handmade_zip([("x.npy", zeros_deflate(1, prefix=big.getvalue()), 2**31, 0, 8)])
    refused(tmp_path, [("data.npz", bomb)], "data.npz[x]", "announces 2,048 MB of data, more than the limit")


def test_gzip_bomb(tmp_path):
    """An IDX header announcing 60000 images of 28x28, then 1.1 GB of zeros, gzipped."""
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 28, 28)
    bomb = gzip_wrap(zeros_deflate(1100, prefix=header), 0, 0)
    refused(tmp_path, [("train-images-idx3-ubyte.gz", bomb)], "more data than its IDX header announces", "gzip bomb")
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 2**20, 2**10, 2**10)
    refused(tmp_path, [("train-images-idx3-ubyte.gz", gzip_wrap(zeros_deflate(1, prefix=header), 0, 0))],
            "announces 1,048,576 MB of data, more than the limit")


def test_zip_bomb_by_file_count(tmp_path):
    tiny = png_bytes(0, (2, 2))
    many = zip_bytes({f"img/{i:05d}.png": tiny for i in range(20_001)})
    refused(tmp_path, [("many.zip", many)], "holds 20,001 entries, more than the limit of 20,000")


def test_too_many_images_at_once(tmp_path):
    tiny = png_bytes(0, (2, 2))
    limits = UploadLimits(max_files=10)
    with pytest.raises(TrainerError, match="11 files were uploaded, more than the limit of 10"):
        from explorer.services.upload_checks import validate_upload
        validate_upload([(f"{i}.png", tiny) for i in range(11)], limits)


@pytest.mark.parametrize("member", ["../evil.png", "a/../../evil.png", "/tmp/evil.png", "C:/evil.png",
                                    "..\\..\\evil.png", "ok/\x01.png"])
def test_archive_paths_escaping_the_folder(member, tmp_path):
    good = png_bytes(1)
    archive = handmade_zip([("ok/a.png", good, len(good), zlib.crc32(good), 0),
                            (member, good, len(good), zlib.crc32(good), 0)])
    refused(tmp_path, [("photos.zip", archive)], "photos.zip")
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_archive_with_a_symlink(tmp_path):
    link_target = b"/etc/passwd"
    archive = handmade_zip([("a.png", link_target, len(link_target), zlib.crc32(link_target), 0)],
                           external_attr=(0o120777 << 16))
    refused(tmp_path, [("photos.zip", archive)], "symbolic link")


def test_archive_with_non_images(tmp_path):
    refused(tmp_path, [("photos.zip", zip_bytes({"a.png": png_bytes(0), "run.sh": b"rm -rf ~"}))],
            "not images ('run.sh')")


def test_image_decompression_bomb(tmp_path):
    refused(tmp_path, [("a.png", png_header_only(5000, 5000)), ("b.png", png_bytes(0))],
            "a.png", "5000x5000 pixels, more than the limit")
    refused(tmp_path, [("photos.zip", zip_bytes({"a.png": png_header_only(100_000, 100_000)}))], "photos.zip")


CSVS = {
    "ragged": (b"1,2,3\n4,5\n6,7,8\n", "line 2 has 2 values, expected 3"),
    "text": (b"a,b\n1,2\n3,hello\n", "non-numeric value 'hello'"),
    "nan": (b"1,2\n3,nan\n", "NaN or infinite"),
    "inf": (b"1,2\n3,inf\n", "NaN or infinite"),
    "billion-columns-announced": (b"c," * 1_000_000 + b"c\n1,2\n", "1,000,001 columns, more than the limit of 100,000"),
    "not-utf8": (b"1,2\n\xff\xfe,3\n", "the content is"),
    "nul-bytes": (b"1,2\n3,\x004\n", "the content is"),
    "header-only": (b"a,b,c\n", "no data rows"),
    "blank": (b"\n\n   \n", "no rows"),
}


@pytest.mark.parametrize("case", list(CSVS))
def test_bad_csv(case, tmp_path):
    data, fragment = CSVS[case]
    refused(tmp_path, [("table.csv", data)], "table.csv", fragment)


def test_csv_with_too_many_values_in_all(tmp_path):
    limits = UploadLimits(max_csv_cells=1000)
    with pytest.raises(TrainerError, match="more than the limit of 1,000"):
        check_upload("t.csv", b"1,2,3,4\n" * 300, limits)


@pytest.mark.parametrize("name", ["empty.npz", "empty.csv", "empty.png", "empty.zip", "t10k-images-idx3-ubyte"])
def test_zero_byte_file(name, tmp_path):
    refused(tmp_path, [(name, b"")], name, "the file is empty (0 bytes)")


def test_file_over_the_configured_size_limit(tmp_path, monkeypatch):
    limits = UploadLimits(max_bytes=1 << 20)
    monkeypatch.setattr(uploads, "UPLOAD_LIMITS", limits)
    monkeypatch.setattr(uploads, "MAX_UPLOAD_MB", 1)
    refused(tmp_path, [("big.npy", npy_bytes(np.zeros((300_000,), np.float32)))], "the limit is 1 MB")
    with pytest.raises(TrainerError, match="1.1 MB, more than the limit of 1 MB"):
        check_upload("big.npy", npy_bytes(np.zeros((300_000,), np.float32)), limits)


def test_the_app_limit_is_the_server_limit():
    import tomllib

    from tests.conftest import ROOT

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert uploads.UPLOAD_LIMITS.max_bytes == config["server"]["maxUploadSize"] * 2**20


def test_npy_truncated_or_announcing_more_than_it_has(tmp_path):
    good = npy_bytes(np.ones((100, 4), np.float32))
    refused(tmp_path, [("x.npy", good[:-10])], "truncated or damaged")
    more = good.replace(b"(100, 4)", b"(900, 4)")  # same header length, 9 times the data announced
    refused(tmp_path, [("x.npy", more)], "announces 14400 bytes of data but the file has 1600")
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 4)})
    refused(tmp_path, [("x.npy", huge.getvalue() + bytes(64))], "announces 15,259 MB of data, more than the limit")
    refused(tmp_path, [("x.npy", good[:8] + b"\xff" * 40)], "not a readable .npy array")


def test_idx_header_announcing_more_than_it_has(tmp_path):
    data = bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 28, 28) + bytes(100)
    refused(tmp_path, [("train-images-idx3-ubyte", data)], "announces 47,040,000 bytes of data but the file has 100")


# -- what must still be accepted ------------------------------------------------------------------

def test_good_uploads_still_work(tmp_path):
    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    zipped = zip_bytes({f"digits/{c}/{i}.png": png_bytes(10 * c + i) for c in range(2) for i in range(5)}
                       | {"__MACOSX/._x": b"junk", "digits/.DS_Store": b"junk"})
    cases = [
        ([("data.npz", npz_bytes(x=rng.normal(size=(30, 3)), y=np.arange(30)))], (3,), False),
        ([("data.npy", npy_bytes(rng.normal(size=(30, 4)).astype(np.float32)))], (4,), False),
        ([("table.csv", b"a,b,label\n" + b"".join(f"{i},{i * 2},{i % 2}\n".encode() for i in range(20)))], (2,), False),
        ([("photos.zip", zipped)], (1, 8, 8), True),
        ([(f"img{i}.png", png_bytes(i)) for i in range(4)], (1, 8, 8), True),
        ([(f"img{i}.jpg", jpeg_bytes(i)) for i in range(4)], (3, 8, 8), True),
        ([("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(DIGITS)))], (1, 8, 8), True),
        ([("t10k-images-idx3-ubyte", idx_bytes(DIGITS))], (1, 8, 8), True),
    ]
    for files, shape, is_image in cases:
        saved = uploads.save_upload(root, files)
        assert saved.shape == shape and saved.is_image == is_image, (files[0][0], saved)
        assert Path(saved.spec).resolve().parent == (root / "uploads").resolve()
    zipped_saved = [p for p in (root / "uploads").iterdir() if p.name.startswith("photos")][0]
    assert sorted(p.relative_to(zipped_saved).as_posix() for p in zipped_saved.rglob("*.png"))[:2] == \
        ["0/0.png", "0/1.png"]  # one folder per class; the zip's one top folder (digits/) dropped
    assert not list(zipped_saved.rglob("._x")) and not list(zipped_saved.rglob(".DS_Store"))


def test_sniff_names_what_the_bytes_are():
    assert sniff(png_bytes(0)) == "png" and sniff(jpeg_bytes(0)) == "jpeg"
    assert sniff(npz_bytes(x=np.ones(2))) == "zip" and sniff(npy_bytes(np.ones(2))) == "npy"
    assert sniff(gzip.compress(b"x")) == "gzip" and sniff(pickle.dumps(1)) == "pickle"
    assert sniff(idx_bytes(DIGITS)) == "idx" and sniff("1,2\nä,3\n".encode()) == "text"
    assert sniff(os.urandom(1) + b"\x00\xff\xfe" * 10) == "unknown"
