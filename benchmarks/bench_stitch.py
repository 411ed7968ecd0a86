"""Completion quality of the stitch method against OpenCV's Telea inpainting, on every scene with a ground
truth: masked PSNR and SSIM per scene and on average, and seconds per scene at full resolution on one core.
Also a plain stitch (the best-matching reference through one homography, a global gain per channel, no
judging, inpainting only where it does not reach), to show what judging each warp by the known pixels adds.

    REALFILL_SCENES=path/to/scenes python benchmarks/bench_stitch.py [--holdout_px 8 16 24 32]

With --holdout_px, the gain over Telea (mean and worst scene) of each held-out ring width besides the default.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import cv2
import numpy as np

from realfill.config import GeometryConfig, StitchConfig
from realfill.data.scene import Scene, list_scenes, load_scene
from realfill.evaluation.metrics import psnr_in_region, ssim_in_region
from realfill.geometry.known import known_matches, planes
from realfill.geometry.matchers import matcher
from realfill.method.stitch import band, inpaint, stitch


def plain_stitch(scene: Scene, config: StitchConfig, geometry: GeometryConfig) -> np.ndarray:
    """One homography from the reference with the most matches on it, gain-compensated on the band of known
    pixels around the hole, pasted into the hole; inpainting where the warp has no pixels."""
    fallback = inpaint(scene.target, scene.mask, config.inpaint_radius)
    matches = known_matches(matcher(geometry), scene.target, scene.mask, scene.refs)
    best = max(((planes(*pair, 1, config.min_inliers, config.ransac_px), ref)
                for pair, ref in zip(matches, scene.refs)),
               key=lambda found: found[0][0][1] if found[0] else 0)
    if not best[0]:
        return fallback
    (matrix, _), ref = best[0][0], best[1]
    height, width = scene.mask.shape
    warped = cv2.warpPerspective(ref, matrix, (width, height)).astype(np.float32)
    covered = cv2.warpPerspective(np.ones(ref.shape[:2], np.uint8), matrix, (width, height)) > 0
    judges = band(scene.mask, config.judge_px) & covered
    if judges.any():
        warped *= scene.target[judges].mean(axis=0) / np.maximum(warped[judges].mean(axis=0), 1.0)
    pasted = np.where(covered[..., None], np.clip(warped, 0, 255), fallback).astype(np.uint8)
    return np.where(scene.mask[..., None], pasted, scene.target)


def gains_over_telea(scenes: list[Scene], config: StitchConfig, geometry: GeometryConfig) -> list[float]:
    """Per scene, stitch's PSNR gain over Telea (dB)."""
    return [psnr_in_region(scene.gt, stitch(scene, config, geometry).image, scene.mask)
            - psnr_in_region(scene.gt, inpaint(scene.target, scene.mask, config.inpaint_radius), scene.mask)
            for scene in scenes]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--holdout_px", nargs="*", type=int, default=[])
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core, as the goal is stated
    root = os.environ["REALFILL_SCENES"]
    config, geometry = StitchConfig(), GeometryConfig()
    scenes = [scene for scene in (load_scene(uri) for uri in list_scenes(root)) if scene.gt is not None]
    print("| scene | Telea PSNR | plain stitch PSNR | stitch PSNR | gain over Telea | Telea SSIM | stitch SSIM |"
          " filled by warps | stitch s |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = []
    for scene in scenes:
        telea = inpaint(scene.target, scene.mask, config.inpaint_radius)
        plain = plain_stitch(scene, config, geometry)
        started = time.perf_counter()
        result = stitch(scene, config, geometry)
        seconds = time.perf_counter() - started
        row = [psnr_in_region(scene.gt, telea, scene.mask), psnr_in_region(scene.gt, plain, scene.mask),
               psnr_in_region(scene.gt, result.image, scene.mask), ssim_in_region(scene.gt, telea, scene.mask),
               ssim_in_region(scene.gt, result.image, scene.mask), seconds]
        totals.append(row)
        height, width = scene.mask.shape
        print(f"| {scene.scene_id} ({width}x{height}, {len(scene.refs)} refs) | {row[0]:.2f} | {row[1]:.2f} | "
              f"{row[2]:.2f} | {row[2] - row[0]:+.2f} | {row[3]:.3f} | {row[4]:.3f} | {result.from_warps:.0%} | "
              f"{seconds:.2f} |")
    mean = np.mean(totals, axis=0)
    gains, plain_gains = [row[2] - row[0] for row in totals], [row[1] - row[0] for row in totals]
    print(f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} | **{np.mean(gains):+.2f}** | {mean[3]:.3f} | "
          f"{mean[4]:.3f} | | {mean[5]:.2f} |")
    print(f"\nstitch over Telea: mean {np.mean(gains):+.2f} dB, worst scene {min(gains):+.2f} dB; plain stitch: "
          f"mean {np.mean(plain_gains):+.2f} dB, worst scene {min(plain_gains):+.2f} dB; slowest scene "
          f"{max(row[5] for row in totals):.2f} s")
    for holdout in args.holdout_px:
        found = gains_over_telea(scenes, replace(config, holdout_px=holdout), geometry)
        print(f"holdout_px {holdout}: mean {np.mean(found):+.2f} dB, worst scene {min(found):+.2f} dB")


if __name__ == "__main__":
    main()
