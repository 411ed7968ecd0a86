"""Shared fixtures: a tiny random-weight model built in code, small scenes written in code, and the
real RealBench-layout photos from $REALFILL_SCENES (skipped, with the reason shown, when unset)."""

from __future__ import annotations

import os
import shutil
import struct
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from realfill.config import FillConfig, SampleConfig, TuneConfig


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Every test session builds its own tiny model, through the same cache code users run."""
    cache = tmp_path_factory.mktemp("realfill-cache")
    previous = os.environ.get("REALFILL_CACHE")
    os.environ["REALFILL_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield cache
    if previous is None:
        os.environ.pop("REALFILL_CACHE", None)
    else:
        os.environ["REALFILL_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model(model_cache) -> Path:
    from realfill.method.models import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def scenes_root() -> Path:
    root = os.environ.get("REALFILL_SCENES")
    if not root:
        pytest.skip("REALFILL_SCENES is not set: point it at a RealBench-layout scenes folder to run this test")
    return Path(root)


@pytest.fixture(scope="session")
def extra_scenes_root() -> Path:
    """A second set of real scenes (crowds, occluders, indoor rooms) that no default was chosen on."""
    root = os.environ.get("REALFILL_SCENES_EXTRA")
    if not root:
        pytest.skip("REALFILL_SCENES_EXTRA is not set: point it at a second RealBench-layout scenes folder to run "
                    "this test")
    return Path(root)


def ground_truth_scenes(root: Path) -> list:
    """Every scene under root that has a ground truth, loaded."""
    from realfill.data.scene import list_scenes, load_scene

    return [scene for scene in map(load_scene, list_scenes(str(root))) if scene.gt is not None]


@pytest.fixture(scope="session", params=["scenes", "extra"])
def both_sets(request) -> list:
    """The ground-truth scenes of each set in turn (each skips, with its reason, when its folder is unset)."""
    fixture = "scenes_root" if request.param == "scenes" else "extra_scenes_root"
    return ground_truth_scenes(request.getfixturevalue(fixture))


@pytest.fixture(scope="module")
def example_scene(tmp_path_factory) -> str:
    """The bundled example scene (a hole in a synthetic wall, three references)."""
    from realfill.example import write_example

    return write_example(str(tmp_path_factory.mktemp("example") / "wall"))


def write_scene(root: Path, *, size=(96, 64), refs=2, hole_value=0, seed=0, ref_size=(120, 80),
                blank: bool = False) -> Path:
    """A small synthetic scene: textured target with a rectangular hole (blank: a hole over all of it, a blank
    canvas), and shifted references."""
    rng = np.random.default_rng(seed)
    width, height = size
    world = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    world = np.asarray(Image.fromarray(world).resize((width * 4, height * 4), Image.NEAREST))
    target = world[:height, :width].copy()
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = 255
    if blank:
        mask[:] = 255
    gt = target.copy()
    target[mask > 0] = hole_value
    (root / "target").mkdir(parents=True, exist_ok=True)
    (root / "ref").mkdir(parents=True, exist_ok=True)
    Image.fromarray(target).save(root / "target" / "target.png")
    Image.fromarray(mask).save(root / "target" / "mask.png")
    Image.fromarray(gt).save(root / "target" / "gt.png")
    for index in range(refs):
        top, left = 4 * (index + 1), 6 * (index + 1)
        crop = world[top : top + ref_size[1], left : left + ref_size[0]]
        Image.fromarray(crop).save(root / "ref" / f"{index:02d}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """Random-weight DINO (ViT) and CLIP vision towers with their processors, saved as safetensors."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    dino = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=37), add_pooling_layer=False)
    dino.save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32,
                                                          projection_dim=16, num_hidden_layers=2,
                                                          num_attention_heads=4, intermediate_size=37))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    return root


class CountingFileSystem(MemoryFileSystem):
    """An in-memory object store (`counting://`) that counts every call made of it."""

    protocol = "counting"
    calls: Counter = Counter()

    def __getattribute__(self, name):
        if name in {"ls", "info", "exists", "open", "mv", "rm", "rm_file", "makedirs", "mkdir", "find", "cat_file",
                    "pipe_file", "copy", "cp_file", "isdir", "isfile"}:
            CountingFileSystem.calls[name] += 1
        return super().__getattribute__(name)


@pytest.fixture
def counting():
    """The calls made of `counting://` during the test."""
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    CountingFileSystem.calls.clear()
    yield CountingFileSystem.calls
    MemoryFileSystem.store.clear()


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint on loopback (moto), reached through s3fs by the driver and every Ray worker."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=5123, verbose=False)
    server.start()
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:5123/moto-api/reset", method="POST"))  # empty
    settings = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                "FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:5123"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)  # for the realfill processes: fsspec reads FSSPEC_* at import
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": settings["FSSPEC_S3_ENDPOINT_URL"]})  # this one
    filesystem = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=settings["FSSPEC_S3_ENDPOINT_URL"])
    filesystem.mkdir("realfill-test")
    yield filesystem
    server.stop()


class FaultyS3:
    """An HTTP proxy on loopback in front of the S3 endpoint, answering 503 SlowDown to the requests that match
    a rule instead of forwarding them: `fail(method, part, times)` (times None: every time)."""

    SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your '
                 b'request rate.</Message></Error>')

    def __init__(self, upstream: str):
        import http.client
        import http.server
        import threading

        self.rules: list[list] = []
        self.failed = 0
        faults = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self):
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if faults.should_fail(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(faults.SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(faults.SLOW_DOWN)
                    return
                connection = http.client.HTTPConnection(upstream.removeprefix("http://"), timeout=30)
                connection.request(self.command, self.path, body, dict(self.headers))
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            def log_message(self, *args):
                pass

        Handler.protocol_version = "HTTP/1.1"
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, method: str, part: str, times: int | None = None) -> None:
        self.rules.append([method, part, times])

    def should_fail(self, method: str, path: str) -> bool:
        for rule in self.rules:
            if rule[0] == method and rule[1] in path and (rule[2] is None or rule[2] > 0):
                rule[2] = None if rule[2] is None else rule[2] - 1
                self.failed += 1
                return True
        return False


@pytest.fixture
def faulty_s3(s3, monkeypatch):
    """s3:// reached through FaultyS3, with s3fs and botocore retrying twice (not for a minute)."""
    proxy = FaultyS3(s3.endpoint_url)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": proxy.endpoint,
                                                   "config_kwargs": {"retries": {"max_attempts": 1}}})
    monkeypatch.setattr("s3fs.S3FileSystem.retries", 3)
    yield proxy
    proxy.server.shutdown()


def tiny_config(**tune_overrides) -> FillConfig:
    """The smallest config that still exercises every code path."""
    tune = dict(resolution=64, train_steps=2, batch_size=2, checkpoint_every=0)
    tune.update(tune_overrides)
    return FillConfig(
        base_model="tiny",
        device="cpu",
        tune=TuneConfig(**tune),
        sample=SampleConfig(resolution=64, num_samples=3, steps=2, batch_size=2),
    )


def copy_scene(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels: what a decompression bomb looks like to a reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: install it (Debian: apt-get install "
                                   "chromium) to run the report's browser tests")
LOAD_EVERY_IMAGE = ("Promise.all([...document.images].map(image => { image.loading = 'eager'; "
                    "return image.decode().catch(() => null); }))")


def browse_report(out: Path) -> dict[str, dict]:
    """Every page of OUT's report that links lead to from OUT/report.html, as headless Chromium shows it: by
    page (relative to OUT), its console errors and failed requests, the images that did not load, how many
    images it has, its text and a screenshot (PNG bytes)."""
    from playwright.sync_api import sync_playwright

    root, pages = out.resolve().as_uri() + "/", {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
        todo = [root + "report.html"]
        while todo:
            url = todo.pop()
            name = url.removeprefix(root)
            if name in pages:
                continue
            problems.clear()
            page.goto(url)
            page.evaluate(LOAD_EVERY_IMAGE)
            links = page.evaluate("[...document.querySelectorAll('a[href]')].map(link => link.href)")
            todo += [link.split("#")[0] for link in links if link.startswith(root) and link.endswith(".html")]
            pages[name] = {
                "problems": list(problems), "text": page.inner_text("body"), "screenshot": page.screenshot(),
                "broken": page.evaluate("[...document.images].filter(image => !image.naturalWidth).map(i => i.src)"),
                "images": page.evaluate("document.images.length")}
        browser.close()
    return pages


def blank(screenshot: bytes) -> bool:
    """A screenshot with next to nothing drawn on it."""
    import io

    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("L"), np.float32)
    return pixels.std() < 10 or (pixels < 230).mean() < 0.02
