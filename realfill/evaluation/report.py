"""`realfill report OUT`: a run's static HTML report, written at the end of every fill, run, library and sweep.

Everything it links is relative, so the folder works from a laptop, a static site or a notebook:

    OUT/report.html                  summary, plots and the first page of scenes
    OUT/report/index-N.html          the further pages of scenes (per_page each)
    OUT/report/failures.html         every failure with its message
    OUT/report/scenes/NAME.html      one page per scene
    OUT/report/thumbs/KEY.jpg        thumbnails, named by what they show: made once, reused by later reports
    OUT/report/sheets/NAME-KEY.png   a contact sheet per scene: refs | target + mask | best fills
    OUT/report/plots/NAME-KEY.png    matplotlib plots

A report reads only the manifests (and metrics.parquet, requests.parquet, sweep.parquet when there are
some) and the images they name; whatever is gone since is shown as such, never a broken image.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from realfill.config import ReportConfig
from realfill.data import manifest, storage
from realfill.data.layout import REPORT_DIR, REPORT_PAGE, Output, SceneFiles, storage_name, variant_folder
from realfill.data.records import RequestRow, SampleRow, SceneRow, digest
from realfill.data.runlog import describe
from realfill.data.scene import SceneError, list_refs, read_image
from realfill.evaluation.evaluate import LeaderboardRow, MetricRow, means_of
from realfill.evaluation.metrics import LOWER_IS_BETTER, METRICS, PAPER_REALFILL, Metrics
from realfill.selection.rank import (
    GEOMETRY,
    NO_EVIDENCE,
    NO_EVIDENCE_ANYWHERE,
    NO_EVIDENCE_TEXT,
    NO_KNOWN_REGION,
    SELECTION_TEXT,
    WEAK_EVIDENCE,
)

FOLDERS = ("thumbs", "sheets", "plots", "scenes")
"""The report's folders under OUT/report/: what is in them and not part of the newest report is removed."""
FAILURES_SHOWN = 20
"""Failures listed on the first page; every one is on failures.html."""
TIMINGS = {"tune_s": "tuning", "sample_s": "making images", "rank_s": "ranking"}
"""The scene rows' timing columns, as the report names them."""
SHEET_FILLS = 4
"""Best fills on a contact sheet."""
SHEET_HEIGHT = 240
"""Height of a contact sheet's pictures, in pixels (at most: small images are not enlarged)."""
TINT = np.array([255, 40, 40], np.float32)
"""Colour of the mask drawn over a target."""
INVENTED = np.array([230, 0, 230], np.float32)
"""Colour over the part of a fill the references do not vouch for (its support map's 0 inside the mask)."""


@dataclass(frozen=True)
class Picture:
    """A thumbnail: one image, a target with its mask drawn over it (two sources), or a fill with what its
    support map does not vouch for tinted (three: the fill, the mask, the map). Its key names what it shows (each
    source's URI, size and modification time, and the thumbnail size), so a later report whose images have not
    changed reuses it."""

    sources: tuple[str, ...]
    key: str

    @property
    def path(self) -> str:
        """Where it is, relative to OUT."""
        return f"{REPORT_DIR}/thumbs/{self.key}.jpg"

    @property
    def overlay(self) -> bool:
        return len(self.sources) == 2

    @property
    def invented(self) -> bool:
        return len(self.sources) == 3


class Stamps:
    """Size and modification time of files, from one listing per folder: a report costs a few storage calls
    per scene, not one per image."""

    def __init__(self):
        self.folders: dict[str, dict[str, str]] = {}

    def __call__(self, uri: str) -> str | None:
        """The file's stamp, or None when it is not there."""
        parent, name = storage.split(uri)
        if parent not in self.folders:
            self.folders[parent] = storage.stamped(parent)
        return self.folders[parent].get(name)


@dataclass
class Pictures:
    """Every thumbnail a report shows, by key, and why some cannot be shown."""

    stamps: Stamps
    thumb_px: int
    wanted: dict[str, Picture] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """Pictures that cannot be shown, with the reason: a source not on storage, or one that could not be read."""

    def of(self, *sources: str) -> Picture:
        stamps = [self.stamps(uri) for uri in sources]
        picture = Picture(tuple(sources), digest({"sources": list(zip(sources, stamps)), "px": self.thumb_px}))
        self.wanted.setdefault(picture.key, picture)
        gone = [uri for uri, stamp in zip(sources, stamps) if stamp is None]
        if gone:
            self.problems[picture.key] = f"{gone[0]}: file not found"
        return picture

    def problem(self, picture: Picture) -> str | None:
        """Why the picture cannot be shown (None: it can)."""
        return self.problems.get(picture.key)


def grey_at(uri: str, size: tuple[int, int], px: int) -> Image.Image:
    """A mask or a support map, read at about px and resized to a thumbnail's size."""
    return Image.fromarray(read_image(uri, mode="L", draft=(px, px))).resize(size)


def tinted(image: Image.Image, where: np.ndarray, colour: np.ndarray, strength: float) -> np.ndarray:
    """The image's pixels (float) with colour blended in where asked."""
    pixels = np.asarray(image, np.float32)
    pixels[where] = (1 - strength) * pixels[where] + strength * colour
    return pixels


def make_thumbnail(picture: Picture, px: int) -> bytes:
    """A JPEG whose longest side is at most px; a target is shown with its mask tinted and outlined, a fill with
    what its support map does not vouch for tinted."""
    image = Image.fromarray(read_image(picture.sources[0], draft=(px, px)))
    image.thumbnail((px, px), Image.Resampling.LANCZOS)
    if picture.overlay:
        mask = grey_at(picture.sources[1], image.size, px)
        inside = np.asarray(mask) > 127
        pixels = tinted(image, inside, TINT, 0.45)
        pixels[inside & ~(np.asarray(mask.filter(ImageFilter.MinFilter(3))) > 127)] = TINT
        image = Image.fromarray(pixels.round().astype(np.uint8))
    if picture.invented:
        mask, support = (np.asarray(grey_at(uri, image.size, px)) for uri in picture.sources[1:])
        image = Image.fromarray(tinted(image, (mask > 127) & (support <= 127), INVENTED, 0.5).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def scene_page(scene_id: str) -> str:
    """A scene's page, relative to OUT."""
    return f"{REPORT_DIR}/scenes/{storage_name(scene_id)}.html"


@dataclass
class SceneView:
    """One scene as the report shows it: its row, its samples best first, and the pictures of its pages."""

    row: SceneRow
    samples: list[SampleRow]
    """Its good samples, best rank first."""
    metrics: dict[str, MetricRow]
    """Each evaluated sample's metrics, by image URI."""
    request: RequestRow | None
    refs: list[Picture] = field(default_factory=list)
    target: Picture | None = None
    """The target with its mask drawn over it."""
    gt: Picture | None = None
    fills: list[Picture] = field(default_factory=list)
    """The shown samples' pictures, in the order of `shown`."""
    invented: list[Picture | None] = field(default_factory=list)
    """The same with what their support maps do not vouch for tinted (None for a sample without a map)."""
    before: Picture | None = None
    after: Picture | None = None
    picked: list[tuple[Picture, int | None]] = field(default_factory=list)
    """A library request's references as picked from the album, with their verified matches."""
    inputs_error: str | None = None
    sheet: str | None = None
    """Its contact sheet, relative to OUT."""

    @property
    def scene_id(self) -> str:
        return self.row.scene_id

    @property
    def page(self) -> str:
        return scene_page(self.scene_id)

    @property
    def no_evidence(self) -> bool:
        return self.row.ok and self.row.selection == NO_EVIDENCE

    @property
    def composed(self) -> bool:
        """A blank canvas: its samples are variations of the scene, none ranked or selected."""
        return self.row.ok and self.row.selection == NO_KNOWN_REGION

    @property
    def best(self) -> SampleRow | None:
        return next((sample for sample in self.samples if sample.uri == self.row.best_uri), None)

    @property
    def weak(self) -> bool:
        """Selected on geometry, but the best completion's evidence is near nothing (a score near 0 is no
        confidence)."""
        return self.row.ok and self.row.selection == GEOMETRY and (self.best is None or
                                                                   (self.best.score or 0.0) < WEAK_EVIDENCE)

    @property
    def status(self) -> str:
        if not self.row.ok:
            return "failed"
        return self.row.selection if self.no_evidence or self.composed else "weak evidence" if self.weak else "ok"

    def plotted(self) -> tuple:
        """What the plots show of this scene (a plot is redrawn only when it changes)."""
        samples = [(sample.rank, sample.score, sample.selected, sample.uri == self.row.best_uri,
                    self.metrics.get(sample.uri)) for sample in self.samples]
        return self.scene_id, self.status, samples

    def shown(self, top: int) -> list[SampleRow]:
        return self.samples[:top]

    @cached_property
    def top_score(self) -> float:
        return max((sample.score or 0.0 for sample in self.samples), default=0.0)

    def metric_rows(self) -> list[MetricRow]:
        """Each evaluated sample's metrics, with whether this run selected it (what means_of averages)."""
        return [replace(self.metrics[sample.uri], selected=sample.selected) for sample in self.samples
                if sample.uri in self.metrics]

    def metric_means(self) -> dict[str, dict[str, float | None]]:
        rows = self.metric_rows()
        return means_of(rows) if rows else {}


def picture_sources(view: SceneView, pictures: Pictures, top: int) -> None:
    """The pictures of a scene: references, target with mask, ground truth, best fills, a request's before/after."""
    scene_uri = view.row.scene_uri
    try:
        view.refs = [pictures.of(uri) for uri in list_refs(scene_uri)]
    except SceneError as exc:
        view.inputs_error = str(exc)
    files = SceneFiles(scene_uri)
    target, mask, gt = files.target, files.mask, files.gt
    view.target = pictures.of(target, mask)
    view.gt = pictures.of(gt) if pictures.stamps(gt) else None
    view.fills = [pictures.of(sample.uri) for sample in view.shown(top)]
    view.invented = [pictures.of(sample.uri, mask, sample.support_uri) if sample.support_uri else None
                     for sample in view.shown(top)]
    if view.request is not None:
        view.before = pictures.of(view.request.target)
        view.after = pictures.of(view.request.filled_uri) if view.request.filled_uri else None
        view.picked = [(pictures.of(ref.uri), ref.matches) for ref in view.request.refs]


def read_views(out_uri: str) -> list[SceneView]:
    """Every scene of the run (its current row), with its samples, metrics and library request."""
    sample_table, scene_table = manifest.read_tables(out_uri)
    samples: dict[str, list[SampleRow]] = {}
    for sample in manifest.rows_of(sample_table, SampleRow):
        if sample.ok:
            samples.setdefault(sample.scene_id, []).append(sample)
    metrics_uri, requests_uri = Output(out_uri).metrics, Output(out_uri).requests
    metrics: dict[str, MetricRow] = {}
    if storage.exists(metrics_uri):
        metrics = {row.uri: row for row in manifest.rows_of(manifest.read_arrow(metrics_uri), MetricRow)}
    requests: dict[str, RequestRow] = {}
    if storage.exists(requests_uri):
        requests = {row.scene_id: row for row in manifest.rows_of(manifest.read_arrow(requests_uri), RequestRow)}
    views = []
    for row in sorted(manifest.rows_of(scene_table, SceneRow), key=lambda row: row.scene_id):
        own = sorted(samples.get(row.scene_id, []) if row.ok else [],
                     key=lambda sample: (sample.rank is None, sample.rank or 0, sample.seed))
        views.append(SceneView(row, own, {sample.uri: metrics[sample.uri] for sample in own if sample.uri in metrics},
                               requests.get(row.scene_id)))
    return views


def relative(out_uri: str, page: str, uri: str) -> str | None:
    """A link from a page (relative to OUT) to a file outside the report: relative when both are on one
    filesystem (a local disk, or one bucket), else none (a browser cannot follow s3://)."""
    if "://" not in out_uri and "://" not in uri:
        start = os.path.dirname(os.path.join(out_uri, page))
        return quote(os.path.relpath(uri, start).replace(os.sep, "/"))
    head, _, path = out_uri.partition("://")
    other_head, _, other_path = uri.partition("://")
    bucket, other_bucket = path.split("/")[0], other_path.split("/")[0]
    if head != other_head or bucket != other_bucket:
        return None
    return quote(posixpath.relpath(other_path, posixpath.dirname(posixpath.join(path, page))))


# Plots: matplotlib's object API on the Agg canvas (no pyplot state, no display needed).

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def score_plot(views: list[SceneView]) -> bytes:
    """Each scene's sample scores as a row of dots: grey all, blue selected, a red star the best."""
    figure = _figure(8, 1.2 + 0.3 * len(views))
    axes = figure.add_subplot()
    points = [(sample.score or 0.0, y, bool(sample.selected), sample.uri == view.row.best_uri)
              for y, view in enumerate(views) for sample in view.samples]
    for keep, size, colour, marker in ((lambda kept, best: not kept, 14, "#9aa5b1", "o"),
                                       (lambda kept, best: kept, 18, "#1f6fd1", "o"),
                                       (lambda kept, best: best, 110, "#d62728", "*")):
        chosen = [(score, y) for score, y, kept, best in points if keep(kept, best)]
        if chosen:
            axes.scatter(*zip(*chosen), s=size, color=colour, marker=marker, zorder=2 + size / 100)
    for y, view in enumerate(views):
        if view.status != "ok":
            axes.annotate(view.status, (1, y), xycoords=("axes fraction", "data"), xytext=(-4, 0),
                          textcoords="offset points", ha="right", va="center", fontsize=8, color="#b00020")
    axes.set_yticks(range(len(views)), labels=[view.scene_id for view in views], fontsize=8)
    axes.set_ylim(len(views) - 0.5, -0.5)
    axes.set_xlabel("score (matches landing where the known pixels say; higher is better)")
    axes.set_title("Sample scores per scene: grey all, blue selected, red star the best", fontsize=10)
    top = max((view.top_score for view in views), default=0.0)
    if top <= 0:
        axes.set_xlim(-0.5, 1.0)
    elif top > 20:
        axes.set_xscale("symlog", linthresh=1.0)  # scores span from a fraction to hundreds of matches
        axes.set_xlim(-0.3, top * 1.6)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def present_metrics(rows: list[Metrics]) -> list[str]:
    return [name for name in METRICS
            if any(getattr(row, name) is not None and not math.isnan(getattr(row, name)) for row in rows)]


def rank_plot(views: list[SceneView]) -> bytes | None:
    """Each metric against rank (1 = the best-scored sample): a scene a faint line, the mean over scenes bold.
    Falling (or, for lower-is-better metrics, rising) with rank says selection picks the better samples."""
    ranked = [[(sample.rank, view.metrics[sample.uri]) for sample in view.samples
               if sample.rank is not None and sample.uri in view.metrics] for view in views]
    ranked = [points for points in ranked if len(points) > 1]
    names = present_metrics([values for points in ranked for _, values in points])
    if not names:
        return None
    figure = _figure(3.2 * len(names), 3.0)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        by_rank: dict[int, list[float]] = {}
        for points in ranked:
            line = [(rank, getattr(values, name)) for rank, values in points if getattr(values, name) is not None]
            axes.plot([rank for rank, _ in line], [value for _, value in line], color="#9aa5b1", alpha=0.35, lw=0.8)
            for rank, value in line:
                by_rank.setdefault(rank, []).append(value)
        ranks = sorted(by_rank)
        axes.plot(ranks, [np.mean(by_rank[rank]) for rank in ranks], color="#1f6fd1", lw=2.2, marker="o", ms=3)
        axes.set_title(f"{name} {'↓' if name in LOWER_IS_BETTER else '↑'}", fontsize=10)
        axes.set_xlabel("rank by score")
        axes.grid(alpha=0.3)
    figure.suptitle("Metric versus rank: does selection pick the better samples?", fontsize=10)
    return _png(figure)


def leaderboard_plot(rows: list[LeaderboardRow]) -> bytes | None:
    """A sweep's variants side by side per metric: all seeds and the selected ones."""
    names = present_metrics(rows)
    if not names:
        return None
    variants = list(dict.fromkeys(row.variant for row in rows))
    figure = _figure(max(3.2 * len(names), 6), 0.9 + 0.35 * len(variants) * 2)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        for offset, group, colour in ((-0.2, "all", "#9aa5b1"), (0.2, "selected", "#1f6fd1")):
            values = [next((getattr(row, name) for row in rows if row.variant == variant and row.group == group
                            and getattr(row, name) is not None), np.nan) for variant in variants]
            axes.barh(np.arange(len(variants)) + offset, values, height=0.4, color=colour, label=group)
        axes.axvline(PAPER_REALFILL[name], color="#d62728", lw=1, ls="--", label="paper RealFill")
        axes.set_yticks(range(len(variants)), labels=variants if index == 0 else [""] * len(variants), fontsize=8)
        axes.invert_yaxis()
        axes.set_title(f"{name} {'↓' if name in LOWER_IS_BETTER else '↑'}", fontsize=10)
        axes.grid(axis="x", alpha=0.3)
    figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    figure.suptitle("Leaderboard: each variant's mean over all seeds and over the selected ones", fontsize=10)
    return _png(figure)


# Contact sheets: the scene's thumbnails side by side, with a caption under each.

def contact_sheet(title: str, tiles: list[tuple[bytes | None, str]]) -> bytes:
    """One PNG: the title over the tiles (thumbnail JPEG bytes, or None for a text tile) left to right."""
    font = ImageFont.load_default(size=14)
    photos = {index: Image.open(io.BytesIO(data)).convert("RGB") for index, (data, _) in enumerate(tiles) if data}
    height = min(SHEET_HEIGHT, max((photo.height for photo in photos.values()), default=SHEET_HEIGHT))
    images = []
    for index, (_, caption) in enumerate(tiles):
        if index in photos:
            photo = photos[index]
            image = photo.resize((max(1, round(photo.width * height / photo.height)), height), Image.Resampling.LANCZOS)
        else:
            image = Image.new("RGB", (max(height, 160), height), (236, 238, 241))
            ImageDraw.Draw(image).multiline_text((8, height // 2 - 18), caption.replace(": ", ":\n", 1),
                                                 fill=(90, 90, 90), font=font)
        images.append((image, caption))
    gap, band = 8, 26
    sheet = Image.new("RGB", (sum(image.width for image, _ in images) + gap * (len(images) + 1),
                              band + height + band + 2 * gap), "white")
    draw, x = ImageDraw.Draw(sheet), gap
    draw.text((gap, gap), title, fill=(0, 0, 0), font=ImageFont.load_default(size=16))
    for image, caption in images:
        sheet.paste(image, (x, gap + band))
        draw.text((x + 2, gap + band + height + 5), caption[: max(8, image.width // 8)], fill=(30, 30, 30), font=font)
        x += image.width + gap
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def sheet_title(view: SceneView) -> str:
    return " · ".join(part for part in (view.scene_id, view.row.method, view.status) if part)


def sheet_tiles(view: SceneView, pictures: Pictures) -> list[tuple[Picture | None, str]]:
    """What a scene's contact sheet shows: refs | target + mask | best fills (or why there are none)."""
    tiles: list[tuple[Picture | None, str]] = [(ref, f"ref {index + 1}") for index, ref in enumerate(view.refs)]
    tiles.append((view.target, "target + mask"))
    kept = [(picture, sample) for picture, sample in zip(view.fills, view.shown(SHEET_FILLS)) if sample.selected]
    tiles += [(picture, f"#{sample.rank} score {sample.score:.1f}") for picture, sample in kept]
    best = view.invented[0] if kept and view.invented and kept[0][1].support is not None else None
    if best is not None:
        tiles.append((best, f"#1 · {kept[0][1].support:.0%} supported"))
    if view.composed:
        tiles += [(picture, f"variation, seed {sample.seed}") for picture, sample in zip(view.fills,
                                                                                         view.shown(SHEET_FILLS))]
    elif not view.row.ok:
        tiles.append((None, f"failed: {view.row.error}"))
    elif not kept:
        tiles.append((None, "no evidence: nothing selected"))
    return [(picture, caption) for picture, caption in tiles if picture is None or not pictures.problem(picture)]


# Pages.

def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("realfill.evaluation", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["seconds"] = lambda value: "–" if value is None else f"{value:.1f}s"
    environment.filters["evaluated"] = lambda groups: [name for name in METRICS if groups["all"][name] is not None]
    environment.filters["plural"] = lambda count, word: f"{count} {word}{'' if count == 1 else 's'}"
    environment.filters["metric"] = lambda value, name: ("–" if value is None or math.isnan(value)
                                                         else f"{value:.{2 if name == 'psnr' else 3}f}")
    return environment


@dataclass
class Summary:
    """A run at a glance: outcomes, seconds per stage, configs."""

    scenes: int
    ok: int
    failed: list[SceneView]
    no_evidence: list[SceneView]
    composed: list[SceneView]
    """Blank canvases: scenes whose samples are variations, none selected."""
    samples: int
    selected: int
    stage_seconds: dict[str, float]
    """Seconds per stage, summed over the scenes' rows (a call shared by several scenes counts in each)."""
    configs: list[tuple[str, int]]
    """Each distinct config (pretty JSON) and how many scenes ran with it."""
    methods: list[str]
    metrics: dict[str, dict[str, float | None]]
    """Means over all / selected samples, when the run was evaluated."""


def summarize(views: list[SceneView]) -> Summary:
    ok = [view for view in views if view.row.ok]
    seconds = {label: sum(getattr(view.row, column) or 0.0 for view in ok) for column, label in TIMINGS.items()}
    configs = Counter(view.row.config for view in views if view.row.config)
    parsed = {text: json.loads(text) for text in configs}
    metric_rows = [row for view in views for row in view.metric_rows()]
    return Summary(
        scenes=len(views), ok=len(ok), failed=[view for view in views if not view.row.ok],
        no_evidence=[view for view in views if view.no_evidence], composed=[view for view in views if view.composed],
        samples=sum(len(view.samples) for view in views),
        selected=sum(bool(sample.selected) for view in views for sample in view.samples),
        stage_seconds={stage: value for stage, value in seconds.items() if value > 0},
        configs=[(json.dumps(parsed[text], indent=2, sort_keys=True), count) for text, count in configs.most_common()],
        methods=sorted({view.row.method for view in views if view.row.method}),
        metrics=means_of(metric_rows) if metric_rows else {})


@dataclass
class RunReport:
    """What a report wrote: where, and how much of it was made now versus reused."""

    uri: str
    scenes: int
    pages: int
    thumbnails_made: int
    thumbnails_reused: int
    views: list[SceneView] = field(repr=False, default_factory=list)
    pictures: Pictures | None = field(repr=False, default=None)


class Writer:
    """One report's writing (or a chunk of it): the files it makes, so that those of older reports can be removed
    after it. existing: the report's files that earlier reports left, by folder (listed here when not given)."""

    def __init__(self, out_uri: str, config: ReportConfig, existing: dict[str, set[str]] | None = None):
        self.out_uri, self.config = out_uri, config
        self.environment = _environment()
        self.written: set[str] = set()
        """Files of the report, relative to OUT."""
        self.existing = existing if existing is not None else {
            folder: set(storage.stamped(storage.join(out_uri, REPORT_DIR, folder))) for folder in FOLDERS}

    def have(self, path: str) -> bool:
        """Whether a content-named file (relative to OUT) is there from an earlier report."""
        folder, name = path.split("/")[1:3]
        return name in self.existing[folder]

    def write(self, path: str, data: bytes) -> None:
        storage.write_bytes(storage.join(self.out_uri, *path.split("/")), data)
        self.written.add(path)

    def keep(self, path: str) -> None:
        self.written.add(path)

    def page(self, path: str, template: str, **context) -> None:
        """Render a page; `href` in it makes a link to a file of OUT relative to this page, and `outside` one
        to a file anywhere (None when a browser could not follow it)."""
        here = posixpath.dirname(path)

        def href(target: str) -> str:
            return quote(posixpath.relpath(target, here or "."))

        def outside(uri: str | None) -> str | None:
            return relative(self.out_uri, path, uri) if uri else None

        html = self.environment.get_template(template).render(
            href=href, outside=outside, config=self.config, NO_EVIDENCE_TEXT=NO_EVIDENCE_TEXT, METRICS=METRICS,
            COMPOSED_TEXT=SELECTION_TEXT[NO_KNOWN_REGION], WEAK_EVIDENCE=WEAK_EVIDENCE,
            NO_EVIDENCE_ANYWHERE=NO_EVIDENCE_ANYWHERE, PAPER=PAPER_REALFILL, scene_page=scene_page,
            pager_pages=pager_pages, **context)
        self.write(path, html.encode())

    def plot(self, name: str, data: object, draw) -> str | None:
        """A plot named by its data: drawn unless an earlier report drew the same; None when there is nothing
        to draw."""
        path = f"{REPORT_DIR}/plots/{name}-{digest(data)}.png"
        if self.have(path):
            self.keep(path)
            return path
        png = draw()
        if png is None:
            return None
        self.write(path, png)
        return path

    def remove_stale(self) -> None:
        """Files of earlier reports that this one does not use (a scene gone, an image changed)."""
        for folder, names in self.existing.items():
            for name in names:
                if f"{REPORT_DIR}/{folder}/{name}" not in self.written:
                    storage.remove(storage.join(self.out_uri, REPORT_DIR, folder, name))
        for name in storage.stamped(storage.join(self.out_uri, REPORT_DIR)):
            if name.endswith(".html") and f"{REPORT_DIR}/{name}" not in self.written:
                storage.remove(storage.join(self.out_uri, REPORT_DIR, name))


def make_pictures(writer: Writer, pictures: Pictures) -> tuple[int, int]:
    """Make the thumbnails that no earlier report made (in threads); returns (made, reused)."""
    todo = [picture for key, picture in pictures.wanted.items() if key not in pictures.problems]
    fresh = [picture for picture in todo if not writer.have(picture.path)]
    for picture in todo:
        writer.keep(picture.path)

    def make(picture: Picture) -> str | None:
        try:
            writer.write(picture.path, make_thumbnail(picture, pictures.thumb_px))
        except Exception as exc:  # an unreadable image is shown as such; the report goes on
            return describe(exc)
        return None

    with ThreadPoolExecutor(writer.config.workers) as pool:
        for picture, error in zip(fresh, pool.map(make, fresh)):
            if error:
                pictures.problems[picture.key] = error
                writer.written.discard(picture.path)
    return len(fresh) - sum(picture.key in pictures.problems for picture in fresh), len(todo) - len(fresh)


def make_sheets(writer: Writer, views: list[SceneView], pictures: Pictures) -> None:
    """Each scene's contact sheet, named by its tiles: made when they changed."""
    def make(view: SceneView) -> None:
        title, tiles = sheet_title(view), sheet_tiles(view, pictures)
        shows = [title, [(picture.key if picture else None, caption) for picture, caption in tiles]]
        path = f"{REPORT_DIR}/sheets/{storage_name(view.scene_id)}-{digest(shows)}.png"
        if writer.have(path):
            writer.keep(path)
        else:
            thumbs = [(storage.read_bytes(storage.join(writer.out_uri, *picture.path.split("/"))) if picture else None,
                       caption) for picture, caption in tiles]
            writer.write(path, contact_sheet(title, thumbs))
        view.sheet = path

    with ThreadPoolExecutor(writer.config.workers) as pool:
        list(pool.map(make, views))


PAGER_NEAR = 3
"""Index pages a pager links on each side of its own, besides the first and the last: its size is the same at
any number of pages (linking every page made each index page, and the report, grow with the run's square)."""


def pager_pages(number: int, pages: int) -> list[int | None]:
    """The pages the pager of page number links, in order, None where it skips some."""
    shown = sorted({1, pages, *range(max(1, number - PAGER_NEAR), min(pages, number + PAGER_NEAR) + 1)})
    linked: list[int | None] = []
    for previous, page in zip([0, *shown], shown):
        linked += [None, page] if page - previous > 1 else [page]
    return linked


def index_path(number: int) -> str:
    return REPORT_PAGE if number == 1 else f"{REPORT_DIR}/index-{number}.html"


@dataclass
class Chunk:
    """Consecutive index pages whose scenes one call makes, with the ids of the scenes around them."""

    first_page: int
    """The number of its first index page."""
    views: list[SceneView]
    before: str | None
    after: str | None
    """The scene ids just before and after the chunk in the report (its first and last scenes link to them)."""


@dataclass
class ChunkDone:
    """What a chunk's call made: its scenes with their pictures and sheets set, and what the index needs of it."""

    views: list[SceneView]
    problems: dict[str, str]
    """Its pictures that cannot be shown, with the reason."""
    scores: list[str | None]
    """Each of its index pages' score plot, relative to OUT."""
    written: set[str]
    """The report's files it wrote or kept, relative to OUT."""
    made: int
    reused: int


@dataclass(frozen=True)
class ScenePages:
    """The report's work per scene, a chunk of index pages at a time: thumbnails, contact sheets, scene pages and
    each index page's score plot. It carries the files of earlier reports (listed once, for the whole report), so
    that a chunk reuses what is already made."""

    out_uri: str
    config: ReportConfig
    title: str
    existing: dict[str, set[str]]

    def __call__(self, chunk: Chunk) -> ChunkDone:
        config = self.config
        writer, pictures = Writer(self.out_uri, config, self.existing), Pictures(Stamps(), config.thumb_px)
        for view in chunk.views:
            picture_sources(view, pictures, config.top)
        made, reused = make_pictures(writer, pictures)
        make_sheets(writer, chunk.views, pictures)
        ids = [chunk.before, *(view.scene_id for view in chunk.views), chunk.after]
        for position, view in enumerate(chunk.views):
            writer.page(view.page, "scene.html.j2", view=view, pictures=pictures, title=self.title,
                        neighbours=(ids[position], ids[position + 2]),
                        index=index_path(chunk.first_page + position // config.per_page))
        scores = [writer.plot(f"scores-{chunk.first_page + offset}", [view.plotted() for view in members],
                              lambda members=members: score_plot(members))
                  for offset, members in enumerate(storage.chunks(chunk.views, config.per_page))]
        return ChunkDone(chunk.views, pictures.problems, scores, writer.written, made, reused)


def chunks_of(views: list[SceneView], config: ReportConfig) -> list[Chunk]:
    """The report's scenes in chunks of config.chunk_pages index pages, in report order."""
    size = config.chunk_pages * config.per_page
    ids = [None, *(view.scene_id for view in views), None]
    return [Chunk(1 + number * config.chunk_pages, members, ids[number * size], ids[number * size + len(members) + 1])
            for number, members in enumerate(storage.chunks(views, size))]


def write_run_report(out_uri: str, config: ReportConfig, title: str | None = None,
                     map_chunks: storage.ChunkMap = map) -> RunReport:
    """The report of one run's output folder (a fill, run or library, or one variant of a sweep): the scenes'
    pictures, sheets, pages and score plots in chunks of index pages through map_chunks, then the index pages and
    the metric plot here."""
    out_uri = storage.normalize(out_uri)
    if not manifest.exists(out_uri):
        raise ValueError(f"{out_uri}: no manifest here; is this the --out of a realfill fill, run or library?")
    title = title or out_uri
    writer, pictures = Writer(out_uri, config), Pictures(Stamps(), config.thumb_px)
    views, scores, made, reused = [], [], 0, 0
    for done in map_chunks(ScenePages(out_uri, config, title, writer.existing), chunks_of(read_views(out_uri), config)):
        views += done.views
        scores += done.scores
        pictures.problems.update(done.problems)
        writer.written |= done.written
        made, reused = made + done.made, reused + done.reused
    summary = summarize(views)
    pages = storage.chunks(views, config.per_page) or [[]]
    rank_chart = writer.plot("metric-vs-rank", [view.plotted() for view in views], lambda: rank_plot(views))
    for number, members in enumerate(pages, 1):
        writer.page(index_path(number), "index.html.j2", title=title, summary=summary, views=members,
                    number=number, pages=len(pages), index_path=index_path, pictures=pictures,
                    scores=scores[number - 1] if members else None, rank_chart=rank_chart if number == 1 else None,
                    failures_shown=FAILURES_SHOWN)
    if len(summary.failed) > FAILURES_SHOWN:
        writer.page(f"{REPORT_DIR}/failures.html", "failures.html.j2", title=title, summary=summary,
                    index_path=index_path)
    writer.remove_stale()
    return RunReport(Output(out_uri).report, len(views), len(pages), made, reused, views, pictures)


def write_sweep_report(out_uri: str, config: ReportConfig, map_chunks: storage.ChunkMap = map) -> RunReport:
    """A sweep's report: every variant's own report, and a page comparing them (the leaderboard, its plot,
    and each scene's best fill under each variant)."""
    out_uri = storage.normalize(out_uri)
    rows = manifest.rows_of(manifest.read_arrow(Output(out_uri).sweep), LeaderboardRow)
    names = list(dict.fromkeys(row.variant for row in rows))
    reports = {name: write_run_report(Output(out_uri).variant(name).uri, config, f"{out_uri}: variant {name}",
                                      map_chunks) for name in names}
    writer = Writer(out_uri, config)
    chart = writer.plot("leaderboard", rows, lambda: leaderboard_plot(rows))
    every_scene = sorted({view.scene_id for report in reports.values() for view in report.views})
    scene_ids = every_scene[: config.per_page]
    grid = {name: {view.scene_id: view for view in report.views} for name, report in reports.items()}
    variant_dirs = {name: variant_folder(name) for name in names}
    writer.page(REPORT_PAGE, "sweep.html.j2", title=out_uri, rows=rows, names=names, reports=reports, chart=chart,
                scene_ids=scene_ids, grid=grid, variant_dirs=variant_dirs, metric_names=present_metrics(rows),
                total_scenes=len(every_scene))
    writer.remove_stale()
    return RunReport(Output(out_uri).report, len(scene_ids), 1,
                     sum(report.thumbnails_made for report in reports.values()),
                     sum(report.thumbnails_reused for report in reports.values()))


def write_report(out_uri: str, config: ReportConfig | None = None, map_chunks: storage.ChunkMap = map) -> RunReport:
    """OUT/report.html for a run's output folder, or for a sweep's (it holds sweep.parquet); the scenes' work in
    chunks through map_chunks."""
    config = config or ReportConfig()
    if storage.exists(Output(storage.normalize(out_uri)).sweep):
        return write_sweep_report(out_uri, config, map_chunks)
    return write_run_report(out_uri, config, map_chunks=map_chunks)
