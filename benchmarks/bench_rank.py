"""Ranking throughput: scoring candidates against cached scene features vs re-indexing the scene for
every candidate, on one core at 512x512. Also prints the decoy margins on RealBench-layout scenes.

    REALFILL_SCENES=path/to/scenes python benchmarks/bench_rank.py
"""

from __future__ import annotations

import os
import time

import cv2

from realfill.config import RankConfig
from realfill.decoys import make_decoys
from realfill.rank import index_scene, score_candidate
from realfill.scene import list_scenes, load_scene


def main() -> None:
    cv2.setNumThreads(1)
    config = RankConfig()
    scenes = [scene for scene in map(load_scene, list_scenes(os.environ["REALFILL_SCENES"])) if scene.gt is not None]
    candidates = []
    rows = []
    for position, scene in enumerate(scenes):
        decoys = make_decoys(scene, scenes[(position + 1) % len(scenes)].gt)
        index = index_scene(scene, config)
        scores = {name: score_candidate(index, image, config) for name, image in decoys.items()}
        best = max((s.score, name) for name, s in scores.items() if name != "true")
        plain = max((s.matches, name) for name, s in scores.items() if name != "true")
        rows.append((scene.scene_id, scores["true"], best, plain))
        candidates += [(scene, image) for image in decoys.values()]

    indexes = {id(scene): index_scene(scene, config) for scene in scenes}
    started = time.perf_counter()
    for scene, image in candidates:
        score_candidate(indexes[id(scene)], image, config)
    cached = time.perf_counter() - started
    started = time.perf_counter()
    for scene, image in candidates:
        score_candidate(index_scene(scene, config), image, config)
    uncached = time.perf_counter() - started

    print("| scene | true score | best decoy score | margin | true matches | best decoy matches (plain) |")
    print("|---|---|---|---|---|---|")
    for scene_id, true, (best, name), (plain, plain_name) in rows:
        print(f"| {scene_id} | {true.score:.1f} | {best:.1f} ({name}) | {true.score / max(best, 1e-9):.1f}x "
              f"| {true.matches} | {plain} ({plain_name}) |")
    wins = sum(true.score > best for _, true, (best, _), _ in rows)
    plain_wins = sum(true.matches > plain for _, true, _, (plain, _) in rows)
    print(f"\ntrue fill strictly first: {wins}/{len(rows)} (geometry score), {plain_wins}/{len(rows)} (plain count)")
    print(f"\n{len(candidates)} candidates at 512x512, 1 core:")
    print(f"- cached scene features: {len(candidates) / cached:.1f} candidates/s")
    print(f"- re-indexing per candidate: {len(candidates) / uncached:.1f} candidates/s")
    print(f"- speed-up from caching: {uncached / cached:.2f}x")


if __name__ == "__main__":
    main()
