"""`realfill library`: a photo library listed by Ray tasks over chunks of photos (each photo's header: size, EXIF),
its requests made into scenes by Ray CPU tasks (references picked in parallel over targets), the scenes completed
by the pipeline, and the finished photos delivered.

Every problem of the requests table is reported before any scene work starts. A request whose photo cannot be read or
that has no usable reference is recorded as a failed scene with the reason; every other request completes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

import pyarrow as pa
import ray

from pipeline.config import PipelineConfig
from pipeline.driver import RunSummary, connect, fold_at_end, release, root_cause, run_pipeline
from pipeline.fanout import ray_map
from pipeline.progress import Progress
from pipeline.stages import fault_hooks
from realfill.config import FillConfig, LibraryConfig
from realfill.data import manifest, storage
from realfill.data.layout import Output
from realfill.data.lease import OutputLease, fence
from realfill.data.photos import Photo, list_library, save_filled
from realfill.data.records import RequestRow, SceneRow, arrow_schema, run_key
from realfill.data.requests import Request, read_requests
from realfill.data.runlog import log_failure
from realfill.environment import check_environment
from realfill.selection.picking import Coverage, Prepared, photo_descriptors, prepare_scene
from realfill.stages import scene_row

DESCRIBE_CHUNK = 64
"""Photos per descriptor task."""
SHOWN = 10
"""Requests without evidence named one per line in a run's last lines; the requests table has them all."""
LITTLE_SEEN = 0.5
LITTLE_DETAIL = 0.5
"""Below these the references see too little of the fill, or show it too enlarged, to check it (the words of a
request's last line; nothing is decided by them)."""
REQUESTS = arrow_schema(RequestRow, "requests")


@ray.remote
def describe_task(uris: list[str]) -> dict:
    """A chunk of an album's photos' descriptors, by URI (None for one that cannot be read)."""
    check_environment()
    return dict(zip(uris, photo_descriptors(uris)))


@dataclass
class Pool:
    """An album as the requests that pick from it see it, in the object store: its photos, and its descriptors in
    chunks (the driver holds only their references)."""

    photos: ray.ObjectRef
    described: list[ray.ObjectRef]


def album_pool(members: list[Photo]) -> Pool:
    uris = [photo.uri for photo in members]
    return Pool(ray.put({photo.uri: photo for photo in members}),
                [describe_task.remote(chunk) for chunk in storage.chunks(uris, DESCRIBE_CHUNK)])


@ray.remote
def prepare_task(request: Request, scenes_root: str, pool: dict[str, Photo], described: list[ray.ObjectRef],
                 target: Photo | None, config: LibraryConfig, fill: FillConfig) -> Prepared:
    """Pick one request's references from its album and write its scene (CPU): its task reads its own album's
    photos and descriptors, whatever the size of the library."""
    check_environment()
    fault_hooks("pick")
    photos = {**pool, target.uri: target} if target else pool
    descriptors = {uri: value for chunk in ray.get(described) for uri, value in chunk.items()}
    return prepare_scene(request, scenes_root, photos, descriptors, config, fill.geometry)


@dataclass
class LibrarySummary:
    run: RunSummary
    rows: list[RequestRow]
    out_uri: str
    min_support: float = 0.0

    @property
    def delivered(self) -> list[RequestRow]:
        return [row for row in self.rows if row.filled_uri]

    @property
    def failed(self) -> list[RequestRow]:
        return [row for row in self.rows if not row.ok]

    @property
    def without_evidence(self) -> list[RequestRow]:
        """Requests that completed but have no finished photo: no completion could be shown to be real."""
        return [row for row in self.rows if row.ok and not row.filled_uri and row.support is None]

    @property
    def under_support(self) -> list[RequestRow]:
        """Requests whose best completion was held back: less of its fill supported than --min_support."""
        return [row for row in self.rows if row.ok and not row.filled_uri and row.support is not None]

    def text(self) -> str:
        lines = [self.run.text(),
                 f"requests: {len(self.rows)}, filled: {len(self.delivered)}, failed: {len(self.failed)}, "
                 f"no evidence (nothing filled): {len(self.without_evidence)}",
                 f"requests table (one row per request, with its references): {Output(self.out_uri).requests}",
                 f"finished photos: {Output(self.out_uri).filled()}"]
        if len(self.delivered) < len(self.rows):
            why = [f"{len(self.failed)} failed (bad input, no usable reference or a failed stage: each says why "
                   f"above)"] if self.failed else []
            why += [f"{len(self.without_evidence)} without evidence (no completion's content lands where the "
                    f"photo's own pixels say it must, so none is delivered as real)"] if self.without_evidence else []
            why += [f"{len(self.under_support)} under --min_support {self.min_support:g} (less of the fill vouched "
                    f"for by the references; the requests table says each one's support)"] if self.under_support else []
            lines.append(f"delivered {len(self.delivered)} of {len(self.rows)} requests; not delivered: "
                         + "; ".join(why))
            lines += [f"  no evidence: {row.target}: {unverifiable(row)}" for row in self.without_evidence[:SHOWN]]
            if len(self.without_evidence) > SHOWN:
                lines.append(f"  ... and {len(self.without_evidence) - SHOWN} more without evidence "
                             f"(the requests table says each one's fill_seen and fill_detail)")
        else:
            lines.append(f"delivered all {len(self.rows)} requests")
        return "\n".join(lines)


def unverifiable(row: RequestRow) -> str:
    """Why a request's completions could not be shown to be real, from what its references show of the fill."""
    if row.fill_seen is None:
        return "no completion's content lands where the photo's own pixels say it must (references given)"
    coverage = Coverage(row.fill_seen, row.fill_detail)
    if coverage.seen < LITTLE_SEEN:
        return f"{coverage.text()}: most of it is in no reference, nothing there can be checked"
    if coverage.detail < LITTLE_DETAIL:
        return f"{coverage.text()}: they show it enlarged, without the detail a match needs"
    return (f"{coverage.text()}, yet no completion matched them (what they show there: another moment, "
            "a featureless surface, or content the completions did not reproduce)")


def say(show: bool, text: str) -> None:
    if show:
        print(text, file=sys.stderr, flush=True)


def run_library(library: str, out_uri: str, config: FillConfig, library_config: LibraryConfig,
                pipeline: PipelineConfig, requests: str | None = None, outpaint: str | None = None,
                aspect: str | None = None, show_progress: bool = True, adapters: str | None = None) -> LibrarySummary:
    """Fill a photo library (`realfill library`): check every request, pick references and write scenes under
    OUT/scenes (Ray CPU tasks), complete them with the pipeline, and deliver OUT/filled and OUT/requests.parquet."""
    out_uri = storage.normalize(out_uri)
    started_ray = connect(pipeline.address, pipeline.verbose)
    try:
        say(show_progress, f"library: listing {library}")
        started = time.perf_counter()
        photos = list_library(library, map_chunks=ray_map)
        say(show_progress, f"library: {len(photos)} photos in {len({photo.album for photo in photos})} albums "
                           f"({time.perf_counter() - started:.1f}s)")
        checked = read_requests(library, photos, requests, outpaint, aspect)  # every problem, before any work
        with OutputLease(out_uri):
            summary, prepared = complete(checked, photos, out_uri, config, library_config, pipeline, show_progress,
                                         adapters)
            rows = deliver(out_uri, prepared, config, library_config.min_support)
            fence(out_uri)
            manifest.write_arrow(Output(out_uri).requests,
                                 pa.Table.from_pylist([asdict(row) for row in rows], REQUESTS))
    finally:
        release(started_ray)
    return LibrarySummary(summary, rows, out_uri, library_config.min_support)


def pick_all(checked: list[Request], photos: list[Photo], scenes_root: str, config: FillConfig,
             library_config: LibraryConfig, pipeline: PipelineConfig, show_progress: bool) -> list[Prepared]:
    """Every request's references picked and scene written, as Ray CPU tasks (each retried when its worker or
    node is lost); a request whose task fails past its retries fails alone, with its reason. Each album that
    requests pick from is put in the object store once and described in chunks, by tasks."""
    by_album: dict[str, list[Photo]] = {}
    for photo in photos:
        by_album.setdefault(photo.album, []).append(photo)
    picking = sorted({request.album for request in checked if not request.refs})
    say(show_progress, f"library: describing {sum(len(by_album.get(album, [])) for album in picking)} photos, then "
                       f"picking references for {len(checked)} requests")
    pools = {album: album_pool(by_album.get(album, [])) for album in picking}
    given = Pool(ray.put({}), [])  # a request whose table gave its references picks nothing
    progress = Progress("library", {"pick": len(checked)}, show_progress)
    calls = {}
    for index, request in enumerate(checked):
        pool = given if request.refs else pools[request.album]
        calls[prepare_task.options(max_retries=pipeline.retries).remote(
            request, scenes_root, pool.photos, pool.described, request.listed, library_config,
            config)] = index
    prepared: dict[int, Prepared] = {}
    while calls:
        ready, _ = ray.wait(list(calls), num_returns=1)
        index = calls.pop(ready[0])
        try:
            prepared[index] = ray.get(ready[0])
        except Exception as exc:  # its worker or node was lost past its retries, or a bug
            prepared[index] = Prepared(checked[index], None, [], error=log_failure(
                f"picking references for {checked[index].scene_id}", exc, root_cause(exc)))
        if prepared[index].error:
            progress.fail([])
        progress.advance("pick")
    progress.close()
    return [prepared[index] for index in range(len(checked))]


def complete(checked: list[Request], photos: list[Photo], out_uri: str, config: FillConfig,
             library_config: LibraryConfig, pipeline: PipelineConfig, show_progress: bool,
             adapters: str | None) -> tuple[RunSummary, list[Prepared]]:
    """Pick references and write scenes (Ray CPU tasks), complete the scenes, record the requests that
    could not become one as failed scenes (on the Ray that run_library connected)."""
    scenes_root = Output(out_uri).scenes
    prepared = pick_all(checked, photos, scenes_root, config, library_config, pipeline, show_progress)
    scene_uris = [item.scene_uri for item in prepared if item.scene_uri]
    summary = RunSummary()
    if scene_uris:
        summary = run_pipeline(scenes_root, out_uri, config, pipeline, show_progress, adapters,
                               scene_uris=scene_uris, leased=True)
    for item in prepared:
        if item.error:
            summary.failed[item.request.stored_id] = item.error
            manifest.write_scene(out_uri, [], scene_row(item.request.stored_id, storage.join(
                scenes_root, item.request.stored_id), config, error=item.error))
    fold_at_end(out_uri, summary)
    return summary, prepared


def deliver(out_uri: str, prepared: list[Prepared], config: FillConfig, min_support: float) -> list[RequestRow]:
    """Each request's best completion to OUT/filled/<album>/<name>.<ext> when at least min_support of its fill
    is supported, and its row."""
    key = run_key(config)
    scenes = {row.scene_id: row for row in manifest.rows_of(manifest.read_table(out_uri, "scenes"), SceneRow)
              if row.run_key == key}
    rows = []
    for item in prepared:
        request, scene = item.request, scenes.get(item.request.stored_id)
        error = item.error or ("not completed: the run was stopped; the same command resumes" if scene is None
                               else scene.error)
        filled, support = None, scene.best_support if scene is not None and scene.best_uri else None
        destination = Output(out_uri).filled(request.filled)
        fence(out_uri)
        if not error and scene is not None and scene.best_uri and (support or 0.0) >= min_support:
            filled = destination
            save_filled(scene.best_uri, request.target, filled)
        else:  # what an earlier run delivered there is not this run's finished photo
            storage.remove(destination)
        rows.append(RequestRow(
            scene_id=request.scene_id, row=request.row, target=request.target, album=request.album,
            kind=request.kind, request=json.dumps(request.given, sort_keys=True),
            refs=item.picks, status="failed" if error else "ok",
            error=error, scene_uri=item.scene_uri, filled_uri=filled, support=support, pick_s=round(item.seconds, 3),
            fill_seen=item.coverage and item.coverage.seen, fill_detail=item.coverage and item.coverage.detail))
    return rows
