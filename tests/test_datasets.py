"""aether_datasets.py on a small local fixture (a .deb and a wheel built here, never the
network): the manifest records every image file in the packages, kept or with the reason it was
left out; kept files are the packages' bytes with the licences their copyright data give; the
same picture twice is kept once; reserved packages are never fetched; bad input is one line."""

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

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
 2021 Someone Else
License: CC-BY-SA-3.0

Files: extra/*
Copyright: 2022 Extra
License: GPL-3+

Files: photos/lake_by_Ann.jpg
 photos/sea_by_Bo.jpg
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
            if isinstance(data, tuple):  # a link: (tarfile.SYMTYPE or LNKTYPE, target)
                info.type, info.linkname = data
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _deb(path, files):
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({})), ("data.tar.xz", _tar(files))]))


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


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
        "usr/share/backgrounds/link.png": (tarfile.SYMTYPE, "hills.png"),
        "usr/share/backgrounds/hard.png": (tarfile.LNKTYPE, "./usr/share/backgrounds/hills.png"),
        "usr/share/doc/test-wallpapers/copyright": COPYRIGHT.encode(),
    }
    _deb(folder / "test-wallpapers_1.0-1_all.deb", deb_files)
    _wheel(
        folder / "test_images-2.0-py3-none-any.whl",
        {
            "test_images/data/licensed.png": _encode(_image(3, 320, 320), ".png"),
            "test_images/data/unlicensed.png": _encode(_image(4, 320, 320), ".png"),
            "test_images/__init__.py": b"",
        },
    )
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
    assert hills["copyright"] == "2020 Someone; 2021 Someone Else"  # with its continuation line
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
    assert (
        reasons["usr/share/backgrounds/link.png"] == reasons["usr/share/backgrounds/hard.png"] == "a link, not a file"
    )


@pytest.mark.parametrize(
    "member, expected",
    [
        ("usr/share/backgrounds/hills.png", ("CC-BY-SA-3.0", "2020 Someone; 2021 Someone Else")),  # not extra/*'s
        ("usr/share/backgrounds/sea_by_Bo.jpg", ("CC0-1.0", "2021 Ann")),  # named on a continuation line
        ("usr/share/backgrounds/extra/dune.png", ("GPL-3+", "2022 Extra")),  # a folder's pattern, in that folder
    ],
)
def test_the_last_dep5_stanza_whose_files_match_gives_the_licence(member, expected):
    assert aether_datasets.dep5_licence(COPYRIGHT, member) == expected


def test_gnome_backgrounds_images_its_copyright_file_does_not_name_have_the_package_licence(tmp_path):
    """Its copyright file is not machine-readable: it names adwaita* (CC-BY-SA-3.0) and older
    images, and the package as a whole is GPL-2+."""
    copyright_text = """Image Authors:

 - adwaita*
 - Chmiri.jpg:
   Copyright © 2011 Jakub Steiner <jimmac@gmail.com>
   Licensed under Creative Commons Attribution-ShareAlike 3.0 License.

Licenses:

   This package is free software; you can redistribute it and/or modify
   it under the terms of the GNU General Public License as published by
   the Free Software Foundation; either version 2 of the License, or
"""
    (out := tmp_path / "out").mkdir()
    _deb(
        tmp_path / "gnome-backgrounds_43.1-1_all.deb",
        {
            "usr/share/backgrounds/gnome/adwaita-l.png": _encode(_image(8, 320, 400), ".png"),
            "usr/share/backgrounds/gnome/grid-l.png": _encode(_image(9, 320, 400), ".png"),
            "usr/share/doc/gnome-backgrounds/copyright": copyright_text.encode(),
        },
    )
    (gnome,) = [s for s in aether_datasets.TRAINING_SOURCES if s.package == "gnome-backgrounds"]
    manifest = build([gnome], out, tmp_path, held_out=False, command="test")
    licences = {Path(r["path"]).name: (r["licence"], r["copyright"]) for r in manifest["files"]}
    assert licences["adwaita-l.png"] == ("CC-BY-SA-3.0", "2011 Jakub Steiner <jimmac@gmail.com>")
    assert licences["grid-l.png"][0].startswith("GPL-2+ (the package's general licence;")


@pytest.mark.parametrize(
    "kind, reader", [("deb", (tarfile.TarFile, "extractfile")), ("wheel", (zipfile.ZipFile, "open"))]
)
def test_only_images_within_the_size_limit_are_read(kind, reader, tmp_path, monkeypatch):
    """A small package can inflate to gigabytes: members are chosen by name and declared size
    before any is read."""
    png = _encode(_image(3, 320, 320), ".png")
    files = {"x/ok.png": png, "x/big.png": png + bytes(1000), "x/junk.bin": bytes(1000)}
    if kind == "deb":
        _deb(tmp_path / "pkg_1.0_all.deb", {**files, "usr/share/doc/pkg/copyright": COPYRIGHT.encode()})
    else:
        _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", files)
    read, original = [], getattr(*reader)

    def spy(self, member, *args, **kwargs):
        read.append(getattr(member, "name", None) or member.filename)
        return original(self, member, *args, **kwargs)

    monkeypatch.setattr(*reader, spy)
    monkeypatch.setattr(aether_datasets, "MAX_MEMBER_BYTES", len(png) + 500)
    (out := tmp_path / "out").mkdir()
    source = Source(kind, "pkg", members="x/*", licences={"x/ok.png": ("CC0", "t"), "x/big.png": ("CC0", "t")})
    manifest = build([source], out, tmp_path, held_out=False, command="test")
    records = {r["path"]: r for r in manifest["files"]}
    assert records.keys() == {"x/ok.png", "x/big.png"} and records["x/ok.png"]["kept"]
    assert "over the" in records["x/big.png"]["reason"]
    assert not {"x/big.png", "x/junk.bin"} & {name.removeprefix("./") for name in read}


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


@pytest.mark.parametrize(
    "sizes, expected",
    [
        # packages that nest <wallpaper>/contents/images/<size>.png name many pictures alike
        (
            {"Dune/contents/1920x1080.png": (320, 400), "Lake/contents/1920x1080.png": (320, 400)},
            {
                "Dune/contents/1920x1080.png": "nested-wallpapers__1920x1080.png",
                "Lake/contents/1920x1080.png": (
                    "nested-wallpapers__usr__share__backgrounds__Lake__contents__1920x1080.png"
                ),
            },
        ),
        # sea.jpg, over 2K, is written reduced as a PNG: its name is the package's sea.png's
        (
            {"sea.jpg": (700, 2100), "sea.png": (320, 400)},
            {"sea.jpg": "nested-wallpapers__sea.png", "sea.png": "nested-wallpapers__usr__share__backgrounds__sea.png"},
        ),
    ],
)
def test_pictures_with_the_same_file_name_are_both_kept_under_their_paths(sizes, expected, tmp_path):
    folder, out = tmp_path / "packages", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    deb_files = {
        f"usr/share/backgrounds/{path}": _encode(_image(seed, *size), Path(path).suffix)
        for seed, (path, size) in enumerate(sizes.items(), start=6)
    }
    deb_files["usr/share/doc/nested-wallpapers/copyright"] = COPYRIGHT.encode()
    _deb(folder / "nested-wallpapers_1.0-1_all.deb", deb_files)
    manifest = build([Source("deb", "nested-wallpapers")], out, folder, held_out=False, command="test")
    kept = {r["path"].removeprefix("usr/share/backgrounds/"): r for r in manifest["files"] if r["kept"]}
    assert {path: r["file"] for path, r in kept.items()} == expected
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected.values(), MANIFEST_NAME])
    for path, record in kept.items():  # each file holds its own picture (byte for byte unless reduced)
        data = (out / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["processing"].endswith("PNG") or data == deb_files[f"usr/share/backgrounds/{path}"]


def test_reserved_packages_are_never_fetched(packages, tmp_path):
    assert not {s.package for s in aether_datasets.TRAINING_SOURCES + aether_datasets.HELD_OUT_SOURCES} & set(
        aether_datasets.RESERVED_PACKAGES
    )
    with pytest.raises(InputError, match="mate-backgrounds is reserved"):
        build([Source("deb", "mate-backgrounds")], tmp_path, packages[0], held_out=False, command="test")


def test_command_line_errors_are_one_line(packages, tmp_path, capsys, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "two").mkdir()
    for version in ("9.0", "10.0"):  # which is newer needs Debian's version order
        (tmp_path / "two" / f"ukui-wallpapers_{version}-1_all.deb").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    new = str(tmp_path / "new")
    cases = [
        (["fetch-training-data", str(tmp_path / "full")], "is not empty"),
        (["fetch-training-data", ".", "--packages-dir", str(packages[0])], "is the current folder"),
        (["fetch-training-data", new, "--packages-dir", str(tmp_path / "two")], "; keep one version"),
        (["fetch-training-data", new, "--packages-dir", str(packages[0])], "has no ukui-wallpapers_*.deb"),
        (["fetch-training-data", new, "--packages-dir", str(tmp_path / "nope")], "no such folder"),
        (["fetch-everything", new], "invalid choice"),
    ]
    for argv, message in cases:
        assert aether_datasets.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.partial-*"))


def test_dir_may_be_a_link_to_an_empty_folder(packages, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    monkeypatch.setitem(aether_datasets.COMMANDS, "fetch-training-data", (SOURCES[1:], False))
    assert (
        aether_datasets.main(["fetch-training-data", str(tmp_path / "link"), "--packages-dir", str(packages[0])]) == 0
    )
    assert (tmp_path / "link").is_symlink() and (tmp_path / "empty" / MANIFEST_NAME).is_file()


@pytest.mark.parametrize(
    "source, name, damage",
    [
        (SOURCES[0], "test-wallpapers_1.0-1_all.deb", lambda data: data[: len(data) // 2]),  # an interrupted download
        (SOURCES[1], "test_images-2.0-py3-none-any.whl", lambda data: data[: len(data) // 2]),
        (SOURCES[0], "test-wallpapers_1.0-1_all.deb", lambda data: data[:8] + b"?" * 60),  # not an ar header
    ],
)
def test_a_damaged_package_is_a_one_line_error(packages, source, name, damage, tmp_path, monkeypatch, capsys):
    (tmp_path / name).write_bytes(damage((packages[0] / name).read_bytes()))
    monkeypatch.setitem(aether_datasets.COMMANDS, "fetch-training-data", ([source], False))
    assert aether_datasets.main(["fetch-training-data", str(tmp_path / "out"), "--packages-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot read {name}" in err and "download it again" in err, err


def test_an_epoch_in_a_package_file_name_is_decoded():
    assert aether_datasets.package_version(Path("plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb")) == "4:5.27.5-2"
