"""A bundled example scene, drawn in code: a synthetic textured wall seen from four viewpoints.

The target is one view with a hole, the references are three other views (perspective and light
change), and the untouched target is kept as gt.png, so every command runs on it with no downloads.
"""

from __future__ import annotations

import cv2
import numpy as np

from realfill.data import storage
from realfill.data.layout import Output, SceneFiles, seed_file


def draw_world(rng: np.random.Generator, height: int = 720, width: int = 960) -> np.ndarray:
    """A colourful, corner-rich planar scene: gradient, shapes and lettering."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    world = np.stack([60 + 80 * rows / height, 90 + 60 * cols / width, 140 - 60 * rows / height], -1)
    world = world.astype(np.uint8).copy()
    for _ in range(90):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            w, h = (int(v) for v in rng.integers(20, 140, 2))
            cv2.rectangle(world, (x, y), (x + w, y + h), colour, -1)
        elif kind == 1:
            cv2.circle(world, (x, y), int(rng.integers(10, 70)), colour, -1)
        else:
            points = (rng.normal(0, 50, (5, 2)) + (x, y)).astype(np.int32)
            cv2.fillPoly(world, [points], colour)
    for index in range(12):
        origin = (int(rng.integers(0, width - 200)), int(rng.integers(30, height)))
        cv2.putText(world, f"REALFILL {index}", origin, cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    return world


def view(world: np.ndarray, rng: np.random.Generator, size: tuple[int, int], jitter: float, gain: float) -> np.ndarray:
    """The world's central region seen through a random homography, with a brightness change."""
    height, width = world.shape[:2]
    out_w, out_h = size
    margin_x, margin_y = width * 0.2, height * 0.2
    corners = np.float32([[margin_x, margin_y], [width - margin_x, margin_y],
                          [width - margin_x, height - margin_y], [margin_x, height - margin_y]])
    corners += rng.uniform(-jitter, jitter, corners.shape).astype(np.float32)
    homography = cv2.getPerspectiveTransform(corners, np.float32([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]]))
    image = cv2.warpPerspective(world, homography, (out_w, out_h), flags=cv2.INTER_AREA)
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def write_example(uri: str, seed: int = 7, outpaint: bool = False) -> str:
    """Write an example scene (RealBench layout) to a folder or fsspec URI; returns the URI.
    The hole is a box inside the frame, or with outpaint the border around a kept centre."""
    rng = np.random.default_rng(seed)
    world = draw_world(rng)
    gt = view(world, rng, (320, 256), jitter=0.0, gain=1.0)
    mask = np.zeros(gt.shape[:2], np.uint8)
    if outpaint:
        mask[:] = 255
        mask[48:208, 64:256] = 0
    else:
        mask[80:176, 110:230] = 255
    target = np.where(mask[..., None] > 0, 0, gt).astype(np.uint8)
    files = SceneFiles(uri)
    storage.write_png(files.target, target)
    storage.write_png(files.mask, mask)
    storage.write_png(files.gt, gt)
    for index, gain in enumerate((0.85, 1.0, 1.15)):
        ref = view(world, rng, (360, 270), jitter=60.0, gain=gain)
        storage.write_bytes(files.ref(f"{index:02d}.jpg"),
                            cv2.imencode(".jpg", cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))[1].tobytes())
    return uri


def write_examples(root: str) -> list[str]:
    """A scenes root with two example scenes: one hole to fill, one border to outpaint."""
    return [write_example(storage.join(root, "wall"), seed=7),
            write_example(storage.join(root, "wall-outpaint"), seed=11, outpaint=True)]


LIBRARY_ALBUMS = {
    "city": ("opensfm_berlin_dom", "opensfm_lund_street", "yfcc_sacre_coeur"),
    "art": ("oxford_graffiti", "lightglue_facade", "wxbs_kpi_autumn_winter", "realfill_flowerwoman"),
    "home": ("middlebury_aloe", "middlebury_motorcycle", "realfill_pumpkinlady2"),
}
"""How library_from_scenes mixes the scenes into albums (each album holds other scenes' photos)."""


def library_from_scenes(scenes_root: str, root: str, copies: int = 1) -> dict[str, set[str]]:
    """A photo library made of a RealBench scenes root, to measure reference picking on: each scene's
    references and its complete photo (gt.png, where it has one) become JPEGs of a shared album, beside the
    other scenes of that album, and one edited copy (brighter, slightly cropped) of a target joins its album
    as a near-duplicate. copies > 1 repeats every photo under new names (a larger album, same content).
    Returns each target photo's URI and the URIs of its scene's references (what picking should find)."""
    from realfill.data.scene import list_refs, read_image

    def save(uri: str, image: np.ndarray) -> None:
        storage.write_bytes(uri, cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                              [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())

    truth: dict[str, set[str]] = {}
    for album, scene_ids in LIBRARY_ALBUMS.items():
        for scene_id in scene_ids:
            scene = storage.join(scenes_root, scene_id)
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
    from realfill.config import FillConfig
    from realfill.data import manifest
    from realfill.data.records import SampleRow, run_key
    from realfill.fill import scene_row

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
        manifest.write_scene(out_uri, rows, scene_row(scene_id, scene_uri, config, samples=rows, sample_s=0.5,
                                                      rank_s=0.1))
    manifest.compact(out_uri)
