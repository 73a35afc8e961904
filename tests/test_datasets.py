"""aether_datasets.py on a small local fixture (a .deb and a wheel built here, never the
network): the manifest records every image file in the packages, kept or with the reason it was
left out; kept files are the packages' bytes with the licences their copyright data give; the
same picture twice is kept once; reserved packages are never fetched; bad input is one line."""

import hashlib
import io
import json
import tarfile
import zipfile

import cv2
import numpy as np
import pytest

import aether_datasets
from aether_cli import InputError
from aether_datasets import MANIFEST_NAME, Source, build

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test-wallpapers

Files: *
Copyright: 2020 Someone
License: CC-BY-SA-3.0

Files: photos/lake_by_Ann.jpg
Copyright: 2021 Ann
License: CC0-1.0

Files: debian/*
Copyright: 2022 The packager
License: Expat
"""


def _image(seed, height, width):
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    return smooth


def _encode(image, suffix):
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def _ar(members):
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packages")
    big = _image(1, 500, 600)
    deb_files = {
        "usr/share/backgrounds/lake_by_Ann.jpg": _encode(_image(0, 360, 480), ".jpg"),
        "usr/share/backgrounds/hills.png": _encode(big, ".png"),
        "usr/share/backgrounds/hills-small.png": _encode(
            cv2.resize(big, (480, 400), interpolation=cv2.INTER_AREA), ".png"
        ),
        "usr/share/backgrounds/hills-copy.png": _encode(big, ".png"),
        "usr/share/backgrounds/tiny.png": _encode(_image(2, 64, 64), ".png"),
        "usr/share/backgrounds/panorama.png": _encode(_image(5, 1000, 4100), ".png"),  # reduced x3
        "usr/share/backgrounds/broken.png": b"not a png",
        "usr/share/backgrounds/readme.txt": b"not an image",
        "usr/share/doc/test-wallpapers/copyright": COPYRIGHT.encode(),
    }
    (folder / "test-wallpapers_1.0-1_all.deb").write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({})), ("data.tar.xz", _tar(deb_files))])
    )
    with zipfile.ZipFile(folder / "test_images-2.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("test_images/data/licensed.png", _encode(_image(3, 320, 320), ".png"))
        wheel.writestr("test_images/data/unlicensed.png", _encode(_image(4, 320, 320), ".png"))
        wheel.writestr("test_images/__init__.py", "")
    return folder, deb_files


SOURCES = (
    Source("deb", "test-wallpapers"),
    Source(
        "wheel",
        "test-images",
        members="test_images/data/*",
        licences={"test_images/data/licensed.png": ("CC0", "a test image")},
    ),
)


def test_the_manifest_records_every_image_with_its_source_and_licence(packages, tmp_path):
    folder, deb_files = packages
    manifest = build(SOURCES, tmp_path, folder, held_out=False, command="test")
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == manifest and manifest["command"] == "test"
    records = {r["path"]: r for r in manifest["files"]}
    images = [p for p in deb_files if p.endswith((".png", ".jpg"))] + [
        "test_images/data/licensed.png",
        "test_images/data/unlicensed.png",
    ]
    assert sorted(records) == sorted(images)  # every image file once; readme.txt and copyright are not images
    kept = {r["file"]: r for r in manifest["files"] if r["kept"]}
    assert manifest["images"] == len(kept) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, MANIFEST_NAME])

    lake = kept["test-wallpapers__lake_by_Ann.jpg"]
    assert (lake["licence"], lake["copyright"]) == ("CC0-1.0", "2021 Ann")  # the file's own stanza
    # the same picture three times (twice the same pixels, once smaller): one kept, the largest
    (hills_name,) = [name for name in kept if name.startswith("test-wallpapers__hills")]
    hills = kept[hills_name]
    assert (hills["licence"], hills["version"], hills["width"], hills["height"]) == ("CC-BY-SA-3.0", "1.0-1", 600, 500)
    assert kept["test-images__licensed.png"]["licence"] == "CC0"
    # over 2K on the long side: reduced by a whole factor as block means, written as PNG
    panorama = kept["test-wallpapers__panorama.png"]
    assert (panorama["width"], panorama["height"]) == (1366, 333)
    assert panorama["processing"] == "cropped to 4098x999 and reduced x3 by block means (to 1366x333), PNG"
    source = _image(5, 1000, 4100)[:999, :4098].astype(np.float64)
    block_means = source.reshape(333, 3, 1366, 3, 3).mean(axis=(1, 3))
    written = cv2.imread(str(tmp_path / "test-wallpapers__panorama.png")).astype(np.float64)
    assert np.abs(written - block_means).max() <= 0.5 + 1e-9
    for name, record in kept.items():  # byte for byte (unless reduced), with the right hash
        data = (tmp_path / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        if record["processing"].startswith("none"):
            assert data == deb_files.get(record["path"], data)

    reasons = {path: r.get("reason", "") for path, r in records.items() if not r["kept"]}
    twins = {f"usr/share/backgrounds/{name}" for name in ("hills.png", "hills-copy.png", "hills-small.png")}
    assert {reasons[p] for p in twins - {hills["path"]}} == {f"duplicate of {hills_name}"}
    assert reasons["usr/share/backgrounds/tiny.png"] == "smaller than 300 pixels"
    assert reasons["usr/share/backgrounds/broken.png"] == "cannot decode image 'broken.png' (corrupt or not an image)"
    assert "no licence" in reasons["test_images/data/unlicensed.png"]


def test_the_held_out_set_is_centre_crops(packages, tmp_path):
    manifest = build(SOURCES[:1], tmp_path, packages[0], held_out=True, command="test")
    kept = [r for r in manifest["files"] if r["kept"]]
    assert len(kept) == 1 and kept[0]["file"].startswith("test-wallpapers__hills")  # the others are small or twins
    assert kept[0]["processing"] == "centre crop [60, 10, 540, 490] (x0, y0, x1, y1), PNG"
    crop = cv2.imread(str(tmp_path / kept[0]["file"]))
    assert crop.shape == (480, 480, 3)
    assert np.array_equal(crop, _image(1, 500, 600)[10:490, 60:540])  # the pixels, not resampled
    lake = next(r for r in manifest["files"] if r["path"].endswith("lake_by_Ann.jpg"))
    assert lake["reason"] == "smaller than 480 pixels"


def test_pictures_with_the_same_file_name_are_both_kept_under_their_paths(tmp_path):
    """Packages that nest <wallpaper>/contents/images/<size>.png name many pictures alike."""
    folder, out = tmp_path / "packages", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    deb_files = {
        f"usr/share/backgrounds/{name}/contents/1920x1080.png": _encode(_image(seed, 320, 400), ".png")
        for seed, name in enumerate(("Dune", "Lake"), start=6)
    }
    deb_files["usr/share/doc/nested-wallpapers/copyright"] = COPYRIGHT.encode()
    (folder / "nested-wallpapers_1.0-1_all.deb").write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({})), ("data.tar.xz", _tar(deb_files))])
    )
    manifest = build([Source("deb", "nested-wallpapers")], out, folder, held_out=False, command="test")
    kept = {r["path"]: r["file"] for r in manifest["files"] if r["kept"]}
    assert kept == {
        "usr/share/backgrounds/Dune/contents/1920x1080.png": "nested-wallpapers__1920x1080.png",
        "usr/share/backgrounds/Lake/contents/1920x1080.png": (
            "nested-wallpapers__usr__share__backgrounds__Lake__contents__1920x1080.png"
        ),
    }
    for path, name in kept.items():  # each file holds its own picture, byte for byte
        assert (out / name).read_bytes() == deb_files[path]


def test_reserved_packages_are_never_fetched(packages, tmp_path):
    assert not {s.package for s in aether_datasets.TRAINING_SOURCES + aether_datasets.HELD_OUT_SOURCES} & set(
        aether_datasets.RESERVED_PACKAGES
    )
    with pytest.raises(InputError, match="mate-backgrounds is reserved"):
        build([Source("deb", "mate-backgrounds")], tmp_path, packages[0], held_out=False, command="test")


def test_command_line_errors_are_one_line(packages, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    new = str(tmp_path / "new")
    cases = [
        (["fetch-training-data", str(tmp_path / "full")], "is not empty"),
        (["fetch-training-data", new, "--packages-dir", str(packages[0])], "has no ukui-wallpapers_*.deb"),
        (["fetch-training-data", new, "--packages-dir", str(tmp_path / "nope")], "no such folder"),
        (["fetch-everything", new], "invalid choice"),
    ]
    for argv, message in cases:
        assert aether_datasets.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.partial-*"))
