"""realfill: complete a photo's missing region with what was really there, learned from your other photos of
the same place (RealFill), on one machine or a Ray cluster.

Its flags are the fields of the config dataclasses, typed and documented from them by jsonargparse, with
one name per field, the same in flags, config files and sweep grids: `--seed`, `--tune.train_steps`,
`--sample.steps`, `--rank.keep`. Flags, config files and grid variants are typed by the same parser, and
its errors are said in words. Defaults live in realfill.config alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import logging
import os
import posixpath
import re
import shlex
import signal
import sys
import threading
import types
import typing
from contextlib import ExitStack
from dataclasses import fields
from typing import Any, Literal

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace, set_parsing_settings

from pipeline.config import PipelineConfig
from realfill.config import (
    FAST_SAMPLING,
    EvalConfig,
    FillConfig,
    GeometryConfig,
    LibraryConfig,
    RankConfig,
    ReportConfig,
    expand_grid,
    read_config_file,
    shown,
)
from realfill.data import manifest, storage
from realfill.data.layout import Output
from realfill.data.runlog import RunLog
from realfill.environment import check_environment, version

LOG = logging.getLogger(__name__)

set_parsing_settings(docstring_parse_attribute_docstrings=True)

ADAPTERS_HELP = ("adapter store (default: OUT/adapters); runs that share one reuse each other's adapters "
                 "whenever scene, tune config, seed and base model match")


# --- values in words -----------------------------------------------------------------------------------


def in_words(hint: Any) -> str:
    """A field's type as people say it: 'an integer', 'one of ddpm, dpm', 'a number or null'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(in_words(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    if typing.get_origin(hint) is Literal:
        return f"one of {', '.join(map(str, typing.get_args(hint)))}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def field_hints(config_type: type, prefix: str = "") -> dict[str, Any]:
    """Every field of a config dataclass by its dotted name (sections' fields as SECTION.FIELD), with its type."""
    hints, found = typing.get_type_hints(config_type), {}
    for item in fields(config_type):
        if dataclasses.is_dataclass(hints[item.name]):
            found.update(field_hints(hints[item.name], f"{prefix}{item.name}."))
        else:
            found[prefix + item.name] = hints[item.name]
    return found


def known_fields() -> dict[str, Any]:
    """The fields any command takes, by the dotted name its flag has (`--eval.device`, `--rank.keep`)."""
    return {**field_hints(FillConfig), **field_hints(EvalConfig, "eval."), **field_hints(LibraryConfig),
            **field_hints(ReportConfig), **field_hints(PipelineConfig)}


class PeopleHelp(DefaultHelpFormatter):
    """jsonargparse's help, with each flag's type in words rather than Python's spelling."""

    def _get_type_str(self, action: argparse.Action) -> str | None:
        hint = getattr(action, "_typehint", None)
        return in_words(hint) if hint is not None else super()._get_type_str(action)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def option_strings(parser: ArgumentParser | None) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings] if parser else []


def people_text(exc: BaseException, parser: ArgumentParser | None = None, values: dict | None = None) -> str:
    """A parser error said for people: the flag as typed and its type in words (`--method must be one of
    realfill, stitch, ...; got Stitch`), a misspelt flag with the one meant. values: a file's or a grid
    variant's fields, whose errors name the field and quote the value given."""
    text = one_line(exc)
    wrong = re.match(r'Parser key "([^"]+)":', text)
    if wrong:
        key = wrong[1]
        hint = known_fields().get(key)
        if hint is not None and values is not None:
            return f"{key.rpartition('.')[2]} must be {in_words(hint)} (got {shown(values.get(key))})"
        given = re.search(r"(?:Given|Got) value: (.*?)\.?$", text)
        if hint is not None:
            return f"--{key} must be {in_words(hint)}; got {given[1] if given else 'another value'}"
    unknown = re.match(r"Group '([^']+)' does not accept option '([^']+)'", text) or re.match(
        r"Option '([^']+)' is not accepted", text)
    if unknown:
        name = ".".join(unknown.groups())
        return f"unknown field '{name}' (fields are named like seed, tune.train_steps, sample.steps, rank.keep)"
    required = re.match(r"the following arguments are required: (.*)", text)
    if required:
        names = [name.strip().partition(".")[2] or name.strip() for name in required[1].split(",")]
        options = option_strings(parser)
        return " and ".join(f"--{name}" if f"--{name}" in options else name.upper() for name in names) + \
            (" are required" if len(names) > 1 else " is required")
    choice = re.match(r"argument command: invalid choice: '([^']*)' \(choose from (.*)\)", text)
    if choice:
        commands = re.findall(r"'([^']+)'", choice[2])
        meant = difflib.get_close_matches(choice[1], commands, n=1)
        return (f"unknown command '{choice[1]}'" + (f"; did you mean {meant[0]}?" if meant else "")
                + f" (commands: {', '.join(commands)})")
    unrecognized = re.match(r"unrecognized arguments: (.*)", text)
    if unrecognized and parser is not None:
        options = option_strings(parser)
        flags = [token.partition("=")[0] for token in unrecognized[1].split() if token.startswith("-")]
        lines = []
        for flag in flags or unrecognized[1].split()[:1]:
            meant = difflib.get_close_matches(flag.replace("-", "_").replace("__", "--", 1), options, n=1) or \
                difflib.get_close_matches(flag, options, n=1)
            lines.append(f"unrecognized argument {flag}" + (f"; did you mean {meant[0]}?" if meant else ""))
        return "; ".join(lines)
    return text


# --- the config: one typed path for flags, files and grid variants -----------------------------------


def new_parser(**kwargs) -> ArgumentParser:
    """Errors are raised (and printed by main as one line), not printed with the usage."""
    return ArgumentParser(exit_on_error=False, formatter_class=PeopleHelp, **kwargs)


FAST_HELP = ("fast sampling preset: DPM-Solver++ in 25 steps rather than DDPM in 200 (" +
             " ".join(f"--{name} {value}" for name, value in FAST_SAMPLING.items()) +
             "); a config file and explicit flags still win")


def add_config(parser: ArgumentParser) -> None:
    """FillConfig's fields as flags, under the fast preset and a config file (explicit flags win over both)."""
    parser.add_argument("--fast", action="store_true", help=FAST_HELP)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML/JSON of config fields, named as the flags are: `seed: 1`, `tune.train_steps: "
                             "100` or `tune: {train_steps: 100}`; `fast: true` applies the preset")
    parser.add_class_arguments(FillConfig, None, fail_untyped=True)


@functools.cache
def config_parser() -> ArgumentParser:
    """A parser of FillConfig's fields alone: what types a config file's and a grid variant's values, as the
    flags are typed. Built once: building it costs more than parsing with it, and a grid has many variants."""
    parser = new_parser()
    parser.add_class_arguments(FillConfig, None, fail_untyped=True)
    return parser


@functools.lru_cache(maxsize=8)
def config_namespace(config_json: str) -> Namespace:
    """A config (as its JSON) as the config parser's namespace: parsed once for all the variants of a grid
    over it, each of which is parsed over a clone of it."""
    return config_parser().parse_object(json.loads(config_json))


SECTIONS = {name for name, hint in typing.get_type_hints(FillConfig).items() if dataclasses.is_dataclass(hint)}


def typed_fields(fields_given: dict, source: str, base: FillConfig | None = None) -> FillConfig:
    """A config from fields (a file's, a grid variant's) over base: `fast: true` applies the preset first, then
    the parser types every value and the dataclasses check them. Errors name the source and the field."""
    fields_given = dict(fields_given)
    fast = fields_given.pop("fast", False)
    if not isinstance(fast, bool):
        raise ValueError(f"{source}: fast must be true or false (got {shown(fast)})")
    flat = {}
    for key, value in fields_given.items():  # a section's mapping as its dotted fields, in the order given
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: '{key}' must be a mapping of field names to values (got {shown(value)})")
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    parser = config_parser()
    try:
        namespace = config_namespace(json.dumps((base or FillConfig()).to_dict(), sort_keys=True)).clone()
        if fast:
            namespace = parser.parse_object(FAST_SAMPLING, namespace=namespace)
        return fill_config(parser.parse_object(flat, namespace=namespace))
    except argparse.ArgumentError as exc:
        raise ValueError(f"{source}: {people_text(exc, values=flat)}") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def file_defaults(args: Namespace) -> dict:
    """Defaults, then --fast, then the config file, as parser defaults that explicit flags are parsed over."""
    data = read_config_file(args.config) if args.config else {}
    config = typed_fields({"fast": args.fast, **data} if args.fast else data, args.config or "--fast")
    return config_parser().parse_object(config.to_dict()).as_flat().__dict__


def add_pipeline(parser: ArgumentParser) -> None:
    """PipelineConfig's fields as flags (Ray settings of `realfill run` and `realfill sweep`)."""
    import docstring_parser

    switches = {"force", "verbose"}  # plain switches, not `--force true`
    parser.add_class_arguments(PipelineConfig, None, fail_untyped=True, skip=switches)
    docs = {param.arg_name: param.description for param in docstring_parser.parse_from_object(PipelineConfig).params}
    for name in sorted(switches):
        parser.add_argument(f"--{name}", action="store_true", help=docs[name])


def flat_config(config_type: type, args: Namespace):
    """A config dataclass whose fields are flags of the command (a section's fields are its SECTION.FIELD flags)."""
    values = {item.name: args[item.name] for item in fields(config_type)}
    return config_type(**{name: value.as_dict() if isinstance(value, Namespace) else value
                          for name, value in values.items()})


def fill_config(args: Namespace) -> FillConfig:
    return flat_config(FillConfig, args)


def pipeline_config(args: Namespace) -> PipelineConfig:
    return flat_config(PipelineConfig, args)


def eval_config(args: Namespace) -> EvalConfig:
    return EvalConfig(**args.eval.as_dict())


def cmd_fill(args: Namespace) -> int:
    from realfill.data.lease import OutputLease
    from realfill.fill import fill_scene
    from realfill.selection.rank import SELECTION_TEXT

    config = fill_config(args)
    with OutputLease(args.out):
        with RunLog(args.out, args.verbose) as log:
            row = fill_scene(args.scene, args.out, config, show_progress=not args.quiet, adapters=args.adapters)
            LOG.info("%s: %s", row.scene_id, "ok" if row.ok else f"failed: {row.error}")
        lines = []
        if row.ok:
            supported = f"; {row.best_support:.0%} of its fill supported" if row.best_support is not None else ""
            tuned = f"{row.tune_s:.1f}s tune + " if row.tune_s is not None else ""
            lines = [f"{row.scene_id}: {row.num_samples} samples (method {config.method}) in {tuned}"
                     f"{row.sample_s:.1f}s making images + {row.rank_s:.1f}s rank", *manifest.where_tables(args.out),
                     f"{row.selection}: {SELECTION_TEXT[row.selection]}" if row.best_uri is None
                     else f"best: {row.best_uri} (selection by {row.selection}{supported})"]
        run_ended(args, log, *lines)
    if not row.ok:
        print(f"realfill: {row.scene_id} failed: {row.error}", file=sys.stderr)
        return 1
    return 0


def run_ended(args: Namespace, log: RunLog, *lines: str, where: tuple[str, ...] = (),
              map_chunks: storage.ChunkMap = map) -> None:
    """A run's last lines: what it did, its log (when anything was logged), where its tables are, its report."""
    print("\n".join([*lines, *([f"run log: {log.uri}"] if log.written else []), *where]))
    report_after(args, map_chunks)


def report_after(args: Namespace, map_chunks: storage.ChunkMap = map) -> None:
    """The report a run ends with (unless --no_report), its scenes' pages made through map_chunks (Ray tasks, when
    the run is on Ray). One that cannot be written is said in one line, and the run's outcome stands: everything
    it made is recorded either way."""
    if args.no_report:
        return
    from realfill.evaluation.report import write_report

    try:
        report = write_report(args.out, map_chunks=map_chunks)
    except Exception as exc:  # the run's results are on storage; `realfill report OUT` can try again
        print(f"realfill: the report was not written ({type(exc).__name__}: {exc}); `realfill report "
              f"{args.out}` writes it", file=sys.stderr)
        return
    print(f"report: {report.uri}")


def exit_code(summary) -> int:
    if summary.stopped_by is not None:
        return 128 + summary.stopped_by
    return 1 if summary.failed or summary.errors else 0


def cmd_run(args: Namespace) -> int:
    """The Ray pipeline (imported here, so that everything else in realfill runs without Ray)."""
    from pipeline.driver import hold_ray, run_pipeline
    from pipeline.fanout import chunk_map

    with hold_ray():
        with RunLog(args.out, args.verbose) as log:
            summary = run_pipeline(args.scenes, args.out, fill_config(args), pipeline_config(args),
                                   show_progress=not args.quiet, adapters=args.adapters)
        run_ended(args, log, summary.text(), where=tuple(manifest.where_tables(args.out)), map_chunks=chunk_map())
    return exit_code(summary)


def cmd_library(args: Namespace) -> int:
    """A photo library through the Ray pipeline (imported here, like `run`)."""
    from pipeline.driver import hold_ray
    from pipeline.fanout import chunk_map
    from pipeline.library import run_library

    library = flat_config(LibraryConfig, args)
    with hold_ray():
        with RunLog(args.out, args.verbose) as log:
            summary = run_library(args.library, args.out, fill_config(args), library, pipeline_config(args),
                                  requests=args.requests, outpaint=args.outpaint, aspect=args.aspect,
                                  show_progress=not args.quiet, adapters=args.adapters)
        run_ended(args, log, summary.text(), map_chunks=chunk_map())
    return exit_code(summary.run)


def sweep_configs(args: Namespace, argv: list[str]) -> tuple[dict[str, FillConfig], dict[str, dict]]:
    """Each variant's config and its own fields: the grid file's variants over the command's flags, then
    each --variant NAME:FLAGS (its flags after the command's, so they win)."""
    base, configs, own = fill_config(args), {}, {}
    if args.grid:
        for name, given in expand_grid(read_config_file(args.grid), args.grid).items():
            configs[name] = typed_fields(given, f"{args.grid}: variant '{name}'", base)
            own[name] = given
    for spec in args.variant:
        name, _, flags = spec.partition(":")
        if not name or name in configs:
            raise ValueError(f"--variant {spec!r}: needs a name of its own before ':' (NAME:FLAGS)")
        configs[name] = fill_config(parse([*argv, *shlex.split(flags)])[1])
        own[name] = {"flags": flags.strip()}
    if not configs:
        raise ValueError("a sweep needs variants: --grid FILE and/or --variant NAME:FLAGS")
    return configs, own


def cmd_sweep(args: Namespace, argv: list[str]) -> int:
    from pipeline.driver import hold_ray
    from pipeline.fanout import chunk_map
    from pipeline.sweep import run_sweep

    configs, own = sweep_configs(args, argv)
    with hold_ray():
        with RunLog(args.out, args.verbose) as log:
            summary, board = run_sweep(args.scenes, args.out, configs, own, pipeline_config(args), eval_config(args),
                                       show_progress=not args.quiet)
        out = Output(storage.normalize(args.out))
        run_ended(args, log, summary.text(), where=(board, f"sweep table: {out.sweep}",
                                                    f"leaderboard: {out.leaderboard}"), map_chunks=chunk_map())
    return exit_code(summary)


def map_paths(images: list[str], folder: str) -> list[str]:
    """Where `rank --maps` writes each image's support map: FOLDER/<image file stem>.support.png."""
    stems = [posixpath.splitext(posixpath.basename(image))[0] for image in images]
    for stem in stems:
        if stems.count(stem) > 1:
            same = [image for image, other in zip(images, stems) if other == stem]
            raise ValueError(f"--maps {folder}: {' and '.join(same)} would both write {stem}.support.png (maps are "
                             f"named by the image's file stem); rank them in separate calls")
    return [storage.join(folder, f"{stem}.support.png") for stem in stems]


def cmd_rank(args: Namespace) -> int:
    from realfill.data.scene import load_scene
    from realfill.selection.rank import GEOMETRY, SELECTION_TEXT, rank_scores, score_images, selection
    from realfill.selection.support import map_image, support_fraction, support_map

    config = GeometryConfig(**args.geometry.as_dict())
    maps = map_paths(args.images, args.maps) if args.maps else None
    scene = load_scene(args.scene, FillConfig().max_megapixels)
    rank_config = RankConfig(**args.rank.as_dict())
    scores = score_images(scene, args.images, config, rank_config)
    basis = selection(scene, scores)
    results = []
    for index, (path, score, rank) in enumerate(zip(args.images, scores, rank_scores(scores))):
        supported = support_map(scene.mask, score)
        if maps:
            storage.write_png(maps[index], map_image(supported))
        results.append({"path": path, "matches": score.matches, "score": score.score, "rank": rank,
                        "support": support_fraction(scene.mask, supported), "selection": basis,
                        "confirmed": score.confirmed})
    results.sort(key=lambda result: result["rank"])
    if args.json:
        for result in results:
            print(json.dumps(result))
        return 0
    width = max(len(result["path"]) for result in results)
    print(f"{'rank':>4}  {'score':>9}  {'matches':>7}  {'support':>7}  path")
    for result in results:
        print(f"{result['rank']:>4}  {result['score']:>9.2f}  {result['matches']:>7}  {result['support']:>7.0%}  "
              f"{result['path']:<{width}}")
    if maps:
        print(f"support maps (white: pixels of the fill that the references vouch for): {args.maps}")
    print(f"ranked by {basis}" if basis == GEOMETRY else f"{basis}: {SELECTION_TEXT[basis]}")
    if rank_config.confirm:
        print(f"the top {sum(s.confirmed for s in scores)} confirmed by {rank_config.confirm}")
    return 0


def cmd_eval(args: Namespace) -> int:
    """Here, or with --address (or $RAY_ADDRESS) on the cluster: metric actors on its GPUs, the report's pages as
    Ray tasks."""
    from realfill.evaluation.evaluate import evaluate_run, markdown_summary

    with ExitStack() as stack:
        map_chunks, evaluation = map, None
        if args.address or os.environ.get("RAY_ADDRESS"):
            from pipeline.driver import connect, hold_ray
            from pipeline.fanout import MetricPool, ray_map

            stack.enter_context(hold_ray())
            connect(args.address)
            map_chunks, evaluation = ray_map, stack.enter_context(MetricPool(eval_config(args)))
        table, unavailable, without_gt = evaluate_run(args.out, eval_config(args), show_progress=not args.quiet,
                                                      evaluation=evaluation)
        if without_gt:
            print(f"no gt.png, not evaluated: {', '.join(without_gt)}", file=sys.stderr)
        print(markdown_summary(table, unavailable))
        print(f"\nper-sample metrics: {Output(args.out).metrics}")
        report_after(args, map_chunks)
    return 0


def cmd_report(args: Namespace) -> int:
    from realfill.evaluation.report import write_report

    report = write_report(args.out, flat_config(ReportConfig, args))
    print(f"report: {report.uri} ({report.scenes} scenes, {report.pages} index pages; thumbnails: "
          f"{report.thumbnails_made} made, {report.thumbnails_reused} reused)")
    return 0


def cmd_tiny_model(args: Namespace) -> int:
    from realfill.method.models import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_example(args: Namespace) -> int:
    from realfill.example import write_examples

    print("\n".join(write_examples(args.dir)))
    return 0


SCENES_HELP = "scenes root: a folder or URI holding one folder per scene"


def run_parser(source: str, source_help: str, out_help: str, adapters: bool = True) -> ArgumentParser:
    """A command that completes scenes: what it reads, where it writes (and its adapters, unless it keeps its
    own), progress bars or not."""
    parser = new_parser()
    parser.add_argument(source, help=source_help)
    parser.add_argument("--out", required=True, help=out_help)
    if adapters:
        parser.add_argument("--adapters", metavar="URI", help=ADAPTERS_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no_report", action="store_true", help="do not write OUT/report.html at the end")
    return parser


def make_parser() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The command's parser, and each subcommand's."""
    parser = new_parser(prog="realfill", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--version", action="version", version=f"realfill {version()}")
    commands: dict[str, tuple[ArgumentParser, str]] = {}

    fill = run_parser("scene", "scene folder or URI (RealBench layout)", "output folder or URI")
    fill.add_argument("--verbose", action="store_true",
                      help="full tracebacks on stderr too (they are always in the run's log, OUT/logs/)")
    add_config(fill)
    commands["fill"] = fill, "fine-tune on one scene, sample seeds, write images and manifest"

    run = run_parser("scenes", SCENES_HELP, "output folder or URI (shared storage on a cluster)")
    add_pipeline(run)
    add_config(run)
    commands["run"] = run, "complete every scene under a scenes root on a Ray cluster (or locally)"

    library = run_parser("library", "photo library: a folder or URI of albums (LIBRARY/<album>/*.jpg)",
                         "output folder or URI: scenes/, filled/<album>/, requests.parquet, manifest/")
    library.add_argument("--requests", metavar="FILE", help="CSV or Parquet table of requests: target (required), "
                         "scene_id, mask, box, outpaint, aspect, refs (';'-separated), album")
    library.add_argument("--outpaint", metavar="RATIO", help="without --requests: uncrop every photo by this ratio")
    library.add_argument("--aspect", metavar="W:H", help="without --requests: uncrop every photo to this aspect")
    library.add_class_arguments(LibraryConfig, None, fail_untyped=True)
    add_pipeline(library)
    add_config(library)
    commands["library"] = library, "fill a photo library: requests to scenes, references picked from the albums"

    sweep = run_parser("scenes", SCENES_HELP, "output folder or URI: shared adapters/ and samples/, variants/NAME/, "
                                              "sweep.parquet, leaderboard.md", adapters=False)
    sweep.add_argument("--grid", metavar="FILE", help="YAML/JSON: grid: (field: [values], every combination a "
                                                      "variant), variants: (name: fields), base: (fields for all)")
    sweep.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                       help="a named variant and its flags, over the shared ones, e.g. 'fast:--fast --rank.keep 8'")
    sweep.add_class_arguments(EvalConfig, "eval", fail_untyped=True)
    add_pipeline(sweep)
    add_config(sweep)
    commands["sweep"] = sweep, "many variants of the config over a scenes root in one pipeline, each evaluated"

    rank = new_parser()
    rank.add_argument("scene", help="scene folder or URI")
    rank.add_argument("images", nargs="+", help="completed images (target size), from any generator")
    rank.add_argument("--json", action="store_true",
                      help="one JSON object per line: path, matches, score, rank, support, selection, confirmed")
    rank.add_argument("--maps", default=None,
                      help="write each image's support map here, as <image file stem>.support.png (the target's "
                           "size, 255 where the references vouch for the fill, 0 elsewhere)")
    rank.add_class_arguments(GeometryConfig, "geometry", fail_untyped=True)
    rank.add_class_arguments(RankConfig, "rank", fail_untyped=True, skip={"keep", "keep_fraction"})
    commands["rank"] = rank, "rank completions of a scene by correspondence to its references"

    evaluate = new_parser()
    evaluate.add_argument("out", help="the run's output folder or URI (holds manifest/)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--no_report", action="store_true", help="do not rewrite OUT/report.html with the metrics")
    evaluate.add_class_arguments(EvalConfig, "eval", fail_untyped=True)
    evaluate.add_class_arguments(PipelineConfig, None, fail_untyped=True,
                                 skip={item.name for item in fields(PipelineConfig)} - {"address"})
    commands["eval"] = evaluate, "metrics of a run's samples against the scenes' gt.png (on a cluster: --address)"

    report = new_parser()
    report.add_argument("out", help="the output folder or URI of a fill, run, library or sweep")
    report.add_class_arguments(ReportConfig, None, fail_untyped=True)
    commands["report"] = report, "write OUT/report.html: scenes, completions, scores, metrics and plots"

    tiny = new_parser()
    tiny.add_argument("dir")
    commands["tiny-model"] = tiny, "write the tiny random-weight inpainting model to DIR"

    example = new_parser()
    example.add_argument("dir")
    commands["example"] = example, "write the bundled example scenes root to DIR (two scenes)"

    subcommands = parser.add_subcommands(dest="command")
    for name, (subparser, help_text) in commands.items():
        subcommands.add_subcommand(name, subparser, help=help_text)
    return parser, {name: subparser for name, (subparser, _) in commands.items()}


def parse(argv: list[str]) -> tuple[str, Namespace]:
    """The subcommand and its arguments. Where it takes a config, the fast preset and the config file are
    the defaults that explicit flags are parsed over."""
    parser, subparsers = make_parser()
    try:
        args = parser.parse_args(argv)
        command = args.command
        if "config" in args[command] and (args[command].config or args[command].fast):
            subparsers[command].set_defaults(file_defaults(args[command]))
            args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        command = next((token for token in argv if token in subparsers), None)
        raise argparse.ArgumentError(None, people_text(exc, subparsers.get(command, parser))) from None
    return command, args[command]


COMMANDS = {"fill": cmd_fill, "run": cmd_run, "library": cmd_library, "rank": cmd_rank, "eval": cmd_eval,
            "report": cmd_report, "tiny-model": cmd_tiny_model, "example": cmd_example}


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that a command ends as Ctrl-C does: cleanly, with its exit code."""


def terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        command, args = parse(argv)
        check_environment()
        from realfill.method.models import quiet_libraries

        quiet_libraries()
        return cmd_sweep(args, argv) if command == "sweep" else COMMANDS[command](args)
    except argparse.ArgumentError as exc:
        print(f"realfill: {one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"realfill: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("realfill: interrupted (SIGINT); what finished is recorded, the same command resumes", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("realfill: terminated (SIGTERM); what finished is recorded, the same command resumes", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
