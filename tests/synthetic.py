"""Made-up inputs and outputs for tests and benchmarks: a photo library mixed from a scenes root, and the output
of a run that never ran a model. Nothing in a real run uses them; the benchmarks share them."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from fsspec.implementations.memory import MemoryFileSystem

from realfill.config import FillConfig
from realfill.data import manifest, storage
from realfill.data.layout import Output, SceneFiles, seed_file
from realfill.data.records import SampleRow, run_key
from realfill.data.scene import list_refs, read_image
from realfill.example import draw_world
from realfill.selection.rank import GEOMETRY, NO_EVIDENCE
from realfill.stages import Ranked, Timings, scene_row

LIBRARY_ALBUMS = {
    "city": ("opensfm_berlin_dom", "opensfm_lund_street", "yfcc_sacre_coeur"),
    "art": ("oxford_graffiti", "lightglue_facade", "wxbs_kpi_autumn_winter", "realfill_flowerwoman"),
    "home": ("middlebury_aloe", "middlebury_motorcycle", "realfill_pumpkinlady2"),
}
"""How library_from_scenes mixes the scenes into albums (each album holds other scenes' photos)."""
EXTRA_ALBUMS = {
    "city": ("pt_st_pauls_cathedral", "pt_united_states_capitol"),
    "art": ("scannet_0744", "scannet_0758", "scannet_0806"),
    "home": ("scannet_0713", "scannet_0726", "scannet_0737"),
}
"""With a second scenes root: its scenes join the same albums, so every album mixes both sets (landmarks with
landmarks, rooms with rooms: the hardest neighbours)."""


class CountedFile(io.BytesIO):
    """A file's bytes, adding what is read of them to a count."""

    def __init__(self, data: bytes, count: Counter, path: str):
        super().__init__(data)
        self.count, self.path = count, path

    def read(self, size=-1):
        data = super().read(size)
        self.count[self.path] += len(data)
        return data


class BytesReadFileSystem(MemoryFileSystem):
    """An in-memory object store (`bytesread://`) that counts the bytes read of each file."""

    protocol = "bytesread"
    read: Counter = Counter()

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        return CountedFile(handle.getvalue(), BytesReadFileSystem.read, path) if mode == "rb" else handle


def mask_of(roots: list, photo: str) -> str:
    """The mask of the scene a library photo came from, in whichever of the scenes roots holds that scene."""
    return next(str(Path(root) / Path(photo).stem / "target" / "mask.png") for root in roots
                if (Path(root) / Path(photo).stem).is_dir())


def library_from_scenes(scenes_root: str, root: str, copies: int = 1,
                        extra_root: str | None = None) -> dict[str, set[str]]:
    """A photo library made of a RealBench scenes root, to measure reference picking on: each scene's
    references and its complete photo (gt.png, where it has one) become JPEGs of a shared album, beside the
    other scenes of that album, and one edited copy (brighter, slightly cropped) of a target joins its album
    as a near-duplicate. copies > 1 repeats every photo under new names (a larger album, same content); with
    extra_root, its scenes join the albums too (EXTRA_ALBUMS). Returns each target photo's URI and the URIs of
    its scene's references (what picking should find)."""
    def save(uri: str, image: np.ndarray) -> None:
        storage.write_bytes(uri, cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                              [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())

    truth: dict[str, set[str]] = {}
    sources = [(scenes_root, LIBRARY_ALBUMS)] + ([(extra_root, EXTRA_ALBUMS)] if extra_root else [])
    for source, album, scene_id in ((source, album, scene_id) for source, albums in sources
                                    for album, scene_ids in albums.items() for scene_id in scene_ids):
        scene = storage.join(source, scene_id)
        refs = set()
        for copy in range(copies):
            suffix = f"-{copy}" if copy else ""
            for index, ref in enumerate(list_refs(scene)):
                uri = storage.join(root, album, f"{scene_id}-ref{index}{suffix}.jpg")
                save(uri, read_image(ref))
                refs.add(uri)
        gt = SceneFiles(scene).gt
        if storage.exists(gt):
            target = storage.join(root, album, f"{scene_id}.jpg")
            save(target, read_image(gt))
            truth[target] = refs
    edited = read_image(storage.join(root, "city", "opensfm_lund_street.jpg"))
    height, width = edited.shape[:2]
    edited = cv2.resize(edited[8 : height - 8, 8 : width - 8], (width, height), interpolation=cv2.INTER_AREA)
    save(storage.join(root, "city", "opensfm_lund_street-edited.jpg"),
         np.clip(edited.astype(np.float32) * 1.15 + 5, 0, 255).astype(np.uint8))
    return truth


def synthetic_run(out_uri: str, scenes: int, samples: int = 4, size: tuple[int, int] = (96, 64)) -> None:
    """The output folder of a run that never ran a model: `scenes` small scenes (under OUT/inputs/), `samples`
    images of each and their manifest rows, every 40th scene failed and every 20th without evidence. It is what
    reads a run (the report) measured and tested at scale in seconds."""
    config, rng = FillConfig(method="stitch"), np.random.default_rng(0)
    width, height = size
    world = draw_world(rng)
    for index in range(scenes):
        top, left = (int(rng.integers(0, limit - 2 * extent)) for limit, extent in zip(world.shape, (height, width)))
        scene_id, picture = f"scene-{index:04d}", world[top : top + 2 * height, left : left + 2 * width]
        scene_uri = storage.join(out_uri, "inputs", scene_id)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = 255
        for name, image in (("target/target.png", picture[:height, :width]), ("target/mask.png", mask),
                            ("ref/00.jpg", picture[height:, :width]), ("ref/01.jpg", picture[:height, width:])):
            data = cv2.imencode(".jpg" if name.endswith(".jpg") else ".png", image[..., ::-1] if image.ndim == 3
                                else image)[1].tobytes()
            storage.write_bytes(storage.join(scene_uri, *name.split("/")), data)
        if index % 40 == 39:
            manifest.write_scene(out_uri, [], scene_row(scene_id, scene_uri, config, error=f"{scene_uri}/target/"
                                                        "mask.png: mask is empty (no white pixels)"))
            continue
        lacking, rows = index % 20 == 19, []
        for seed in range(samples):
            uri = storage.join(Output(out_uri).samples, scene_id, seed_file(seed))
            storage.write_png(uri, np.ascontiguousarray(picture[seed : seed + height, seed : seed + width]))
            score = 0.0 if lacking else float(100 - 10 * seed + index % 7)
            rows.append(SampleRow(scene_id=scene_id, seed=seed, uri=uri, status="ok", run_key=run_key(config),
                                  width=width, height=height, matches=0 if lacking else 50 - seed, score=score,
                                  rank=1 if lacking else seed + 1, selected=not lacking and seed < samples // 2))
        ranked = Ranked(rows, NO_EVIDENCE if lacking else GEOMETRY)
        manifest.write_scene(out_uri, rows, scene_row(scene_id, scene_uri, config, ranked=ranked,
                                                      timings=Timings(sample_s=0.5, rank_s=0.1)))
    manifest.compact(out_uri)
