"""Every path realfill reads or writes, named once: a scene's files (RealBench's layout) and an output's
folders and tables. Every other module asks here; none spells a path of its own."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass

from realfill.data import storage

REFS = "ref"
TARGET_DIR = "target"
MAX_NAME = 64
"""Longest storage name kept from a scene id before a digest is appended."""
STITCH_FILE = "stitch.png"
REPORT_PAGE = "report.html"
"""The report's first page, at the top of an output."""
REPORT_DIR = "report"
"""The report's other pages and pictures, under the output."""


def scene_id_of(scene_uri: str) -> str:
    """A scene's id is its folder's name, exactly (a backslash is a character of the name, not a separator)."""
    return posixpath.basename(str(scene_uri).rstrip("/"))


def storage_name(scene_id: str) -> str:
    """The scene's name in the files and folders realfill writes (adapters, samples, manifest parts): portable
    characters, never hidden (Parquet readers skip names that start with '.' or '_'), at most ~80 characters.
    Whenever that changes the id, a digest of the id is appended, so two ids never share a storage name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scene_id).lstrip("._-")[:MAX_NAME]
    if safe and safe == scene_id:
        return safe
    digest = hashlib.sha256(scene_id.encode()).hexdigest()[:10]
    return f"{safe}-{digest}" if safe else f"scene-{digest}"


def collision_key(scene_id: str) -> str:
    """Two scene ids collide when their outputs would share names: equal storage names, up to case (a
    case-insensitive store)."""
    return storage_name(scene_id).casefold()


def seed_file(seed: int) -> str:
    """An image's name in its folder: the folder says what made it, the name which seed."""
    return f"seed-{seed:05d}.png"


def keyed(store: str, scene_id: str, key: str) -> str:
    """A scene's entry in a content-keyed store (adapters, images): its storage name and the key of what made
    it, so equal work is found again and different work never shares a name."""
    return storage.join(store, f"{storage_name(scene_id)}-{key}")


def _path(*parts: str, doc: str = "") -> property:
    """A path under the folder, as a read-only attribute."""
    return property(lambda self: self.join(*parts), doc=doc)


@dataclass(frozen=True)
class SceneFiles:
    """A scene folder: SCENE/ref/*, SCENE/target/{target,mask,gt}.png."""

    uri: str

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    refs = _path(REFS)
    target = _path(TARGET_DIR, "target.png")
    mask = _path(TARGET_DIR, "mask.png")
    gt = _path(TARGET_DIR, "gt.png", doc="The optional ground truth.")

    def ref(self, name: str) -> str:
        return self.join(REFS, name)

    def is_scene(self) -> bool:
        """Whether the folder looks like a scene (it has target/ or ref/)."""
        return storage.exists(self.join(TARGET_DIR)) or storage.exists(self.refs)


def holds_scene_parts(names: list[str]) -> bool:
    """Whether a folder's entries are a scene's own (target/, ref/): a scene given where a root was wanted."""
    return bool({TARGET_DIR, REFS} & set(names))


@dataclass(frozen=True)
class Output:
    """An output folder of fill, run, library or sweep, and every path in it."""

    uri: str

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    adapters = _path("adapters", doc="The adapter store, unless a run is given one to share.")
    samples = _path("samples", doc="The image store (samples and stitch results).")
    metrics = _path("metrics.parquet")
    requests = _path("requests.parquet", doc="A library's requests, as they were read and checked.")
    scenes = _path("scenes", doc="A library's scenes root: one scene folder per request.")
    sweep = _path("sweep.parquet")
    leaderboard = _path("leaderboard.md")
    report = _path(REPORT_PAGE)

    def table(self, name: str) -> str:
        """A manifest table: a folder of Parquet segments, what plain readers read."""
        return self.join("manifest", name)

    def segment(self, name: str, number: int) -> str:
        """One segment of a manifest table (rows of the same scenes in both tables)."""
        return self.join("manifest", name, f"segment-{number:06d}.parquet")

    def placement(self, part: str) -> str:
        """Which segment holds a scene's rows, by the scene's part name (hidden from dataset readers)."""
        return self.join("manifest", "_placement", part.removesuffix(".parquet"))

    def journal(self, name: str) -> str:
        """A manifest table's parts not yet folded into its segments (hidden from dataset readers by the '_')."""
        return self.join("manifest", "_journal", name)

    def one_file(self, name: str) -> str:
        """Where manifests of schema versions 4 and 5 kept a table: one Parquet file."""
        return self.join("manifest", f"{name}.parquet")

    def filled(self, name: str | None = None) -> str:
        """A library's delivered photos, or one of them by its album-relative name."""
        return self.join("filled", name) if name else self.join("filled")

    def log(self, name: str) -> str:
        return self.join("logs", name)

    def variant(self, name: str) -> Output:
        """A sweep variant's output (its manifests, metrics and report)."""
        return Output(self.join(*variant_folder(name).split("/")))


def variant_folder(name: str) -> str:
    """A sweep variant's folder, relative to the sweep's output (what the sweep's report links to)."""
    return f"variants/{storage_name(name)}"
