"""The `realfill` command: one typed function per subcommand. Defaults come from realfill.config."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from typing import Any

from realfill import manifest, storage
from realfill.config import (
    DEVICES,
    FAST_SAMPLING,
    FEATURES,
    LPIPS_NETS,
    SCHEDULERS,
    EvalConfig,
    FillConfig,
    RankConfig,
    SampleConfig,
    TuneConfig,
    expand_grid,
    field_docs,
    read_config_file,
    with_fields,
)
from realfill.environment import check_environment, version

# flag name -> the config fields it sets: (section, field); section None = FillConfig itself
CONFIG_FLAGS: dict[str, list[tuple[str | None, str]]] = {
    "base_model": [(None, "base_model")],
    "device": [(None, "device")],
    "seed": [(None, "seed")],
    "resolution": [("tune", "resolution"), ("sample", "resolution")],
    "train_steps": [("tune", "train_steps")],
    "batch_size": [("tune", "batch_size")],
    "checkpoint_every": [("tune", "checkpoint_every")],
    "num_samples": [("sample", "num_samples")],
    "sample_steps": [("sample", "steps")],
    "sample_batch_size": [("sample", "batch_size")],
    "scheduler": [("sample", "scheduler")],
    "features": [("rank", "features")],
    "keep": [("rank", "keep")],
    "keep_fraction": [("rank", "keep_fraction")],
    "max_megapixels": [(None, "max_megapixels")],
}
SECTIONS = {None: FillConfig, "tune": TuneConfig, "sample": SampleConfig, "rank": RankConfig}
CHOICES = {"device": DEVICES, "scheduler": SCHEDULERS, "features": FEATURES, "lpips_net": LPIPS_NETS}
"""Flags whose values are one of a fixed set, declared as argparse choices from the configs' own sets."""


def _parser_for(annotation: str):
    """argparse type for a dataclass field annotation (annotations are strings here)."""
    for name, parse in (("int", int), ("float", float), ("str", str)):
        if annotation.split("|")[0].strip() == name:
            return parse
    raise TypeError(f"no flag parser for {annotation}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The config flags, typed and documented from the dataclasses (their defaults are not restated)."""
    defaults = {section: cls() for section, cls in SECTIONS.items()}
    group = parser.add_argument_group("config (defaults: the paper's recipe)")
    for flag, targets in CONFIG_FLAGS.items():
        section, name = targets[0]
        default = getattr(defaults[section], name)
        kind = SECTIONS[section].__dataclass_fields__[name].type
        doc = field_docs(SECTIONS[section]).get(name, "").replace("%", "%%")
        group.add_argument(f"--{flag.replace('_', '-')}", type=_parser_for(kind), default=None,
                           choices=CHOICES.get(flag), help=f"{doc} (default: {default})")
    group.add_argument("--fast", action="store_true",
                       help=f"fast sampling preset: {FAST_SAMPLING} (explicit flags still win)")
    group.add_argument("--config", metavar="FILE",
                       help="YAML/JSON with the same fields as these flags (e.g. train_steps: 100), "
                            "plus optional tune:/sample:/rank: sections holding any field of those configs")


EVAL_FLAGS = ("dino_model", "clip_model", "lpips_weights", "lpips_net", "device")
PIPELINE_FLAGS = ("address", "gpus_per_tune", "gpus_per_sampler", "samplers", "max_in_flight", "retries")


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Ray settings of `realfill run`, documented from pipeline.config.PipelineConfig."""
    from pipeline.config import PipelineConfig

    docs = field_docs(PipelineConfig)
    group = parser.add_argument_group("cluster")
    for name in PIPELINE_FLAGS:
        kind = _parser_for(PipelineConfig.__dataclass_fields__[name].type)
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, help=docs[name].replace("%", "%%"))
    group.add_argument("--force", action="store_true", help=docs["force"])


def add_eval_flags(parser: argparse.ArgumentParser, names) -> None:
    eval_docs = field_docs(EvalConfig)
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", choices=CHOICES.get(name),
                            help=f"{eval_docs[name]} (default: {getattr(EvalConfig(), name)})")


def build_config(args: argparse.Namespace) -> FillConfig:
    """Defaults, then --fast, then the config file, then explicit flags."""
    values: dict[str | None, dict[str, Any]] = {section: {} for section in SECTIONS}
    source = args.config or "config"
    if args.fast:
        values["sample"].update(FAST_SAMPLING)
    if args.config:
        data = read_config_file(args.config)
        fast = data.pop("fast", False)
        if not isinstance(fast, bool):
            raise ValueError(f"{source}: fast must be true or false (got {fast!r})")
        if fast:
            values["sample"].update(FAST_SAMPLING)
        for section in ("tune", "sample", "rank"):
            given = data.pop(section, None) or {}
            if not isinstance(given, dict):
                raise ValueError(f"{source}: '{section}' must be a mapping of field names to values (got {given!r})")
            unknown = set(given) - set(SECTIONS[section].__dataclass_fields__)
            if unknown:
                raise ValueError(f"{source}: unknown field '{section}.{sorted(unknown)[0]}' (known: "
                                 f"{', '.join(SECTIONS[section].__dataclass_fields__)})")
            values[section].update(given)
        for key, value in data.items():
            flag = key.replace("-", "_")
            if flag not in CONFIG_FLAGS:
                raise ValueError(f"{source}: unknown field '{key}' (known: fast, tune, sample, rank, "
                                 f"{', '.join(CONFIG_FLAGS)})")
            for section, name in CONFIG_FLAGS[flag]:
                values[section][name] = value
    for flag, targets in CONFIG_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            for section, name in targets:
                values[section][name] = value
    try:
        return FillConfig(tune=TuneConfig(**values["tune"]), sample=SampleConfig(**values["sample"]),
                          rank=RankConfig(**values["rank"]), **values[None])
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def cmd_fill(args: argparse.Namespace) -> int:
    from realfill.fill import fill_scene
    from realfill.lease import OutputLease

    config = build_config(args)
    with OutputLease(args.out):
        row = fill_scene(args.scene, args.out, config, show_progress=not args.quiet, adapters=args.adapters)
    if not row.ok:
        print(f"realfill: {row.scene_id} failed: {row.error}", file=sys.stderr)
        return 1
    print(f"{row.scene_id}: {row.num_samples} samples in {row.tune_s:.1f}s tune + {row.sample_s:.1f}s sample + "
          f"{row.rank_s:.1f}s rank")
    print("\n".join(manifest.where_tables(args.out)))
    print(f"best: {row.best_uri}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The Ray pipeline (imported here, so that everything else in realfill runs without Ray)."""
    from pipeline.driver import run_pipeline

    summary = run_pipeline(args.scenes, args.out, build_config(args), pipeline_config(args),
                           show_progress=not args.quiet, adapters=args.adapters)
    print(summary.text())
    print("\n".join(manifest.where_tables(args.out)))
    if summary.stopped_by is not None:
        return 128 + summary.stopped_by
    return 1 if summary.failed else 0


def pipeline_config(args: argparse.Namespace):
    from pipeline.config import PipelineConfig

    return PipelineConfig(**{name: getattr(args, name) for name in PIPELINE_FLAGS if getattr(args, name)
                             is not None}, force=args.force)


def sweep_configs(args: argparse.Namespace) -> tuple[dict[str, FillConfig], dict[str, dict]]:
    """Each variant's config and its own fields: the grid file's variants over the run's flags, then each
    --variant NAME:FLAGS (its flags after the run's, so they win)."""
    base, configs, fields = build_config(args), {}, {}
    if args.grid:
        for name, given in expand_grid(read_config_file(args.grid), args.grid).items():
            try:
                configs[name] = with_fields(base, given)
            except ValueError as exc:
                raise ValueError(f"{args.grid}: variant '{name}': {exc}") from None
            fields[name] = given
    for spec in args.variant:
        name, _, flags = spec.partition(":")
        if not name or name in configs:
            raise ValueError(f"--variant {spec!r}: needs a name of its own before ':' (NAME:FLAGS)")
        configs[name] = build_config(make_parser().parse_args([*args.argv, *shlex.split(flags)]))
        fields[name] = {"flags": flags.strip()}
    if not configs:
        raise ValueError("a sweep needs variants: --grid FILE and/or --variant NAME:FLAGS")
    return configs, fields


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.sweep import run_sweep

    configs, fields = sweep_configs(args)
    evaluation = EvalConfig(**{name: getattr(args, name) for name in EVAL_FLAGS if name != "device"
                               and getattr(args, name) is not None}, device=next(iter(configs.values())).device)
    summary, board = run_sweep(args.scenes, args.out, configs, fields, pipeline_config(args), evaluation,
                               show_progress=not args.quiet)
    print(summary.text())
    print(board)
    out = storage.normalize(args.out)
    print(f"sweep table: {storage.join(out, 'sweep.parquet')}\nleaderboard: {storage.join(out, 'leaderboard.md')}")
    if summary.stopped_by is not None:
        return 128 + summary.stopped_by
    return 1 if summary.failed else 0


def cmd_rank(args: argparse.Namespace) -> int:
    import json

    from realfill.rank import rank_scores, score_images
    from realfill.scene import load_scene

    config = RankConfig(features=args.features) if args.features else RankConfig()
    scores = score_images(load_scene(args.scene, FillConfig().max_megapixels), args.images, config)
    results = [{"path": path, "matches": s.matches, "score": s.score, "rank": rank}
               for path, s, rank in zip(args.images, scores, rank_scores(scores))]
    results.sort(key=lambda result: result["rank"])
    if args.json:
        for result in results:
            print(json.dumps(result))
        return 0
    width = max(len(result["path"]) for result in results)
    print(f"{'rank':>4}  {'score':>9}  {'matches':>7}  path")
    for result in results:
        print(f"{result['rank']:>4}  {result['score']:>9.2f}  {result['matches']:>7}  {result['path']:<{width}}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from realfill.evaluate import evaluate_run, markdown_summary

    overrides = {name: getattr(args, name) for name in EVAL_FLAGS if getattr(args, name) is not None}
    table, unavailable, without_gt = evaluate_run(args.out, EvalConfig(**overrides), show_progress=not args.quiet)
    if without_gt:
        print(f"no gt.png, not evaluated: {', '.join(without_gt)}", file=sys.stderr)
    print(markdown_summary(table, unavailable))
    print(f"\nper-sample metrics: {storage.join(args.out, 'metrics.parquet')}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from realfill.models import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from realfill.example import write_examples

    print("\n".join(write_examples(args.dir)))
    return 0


ADAPTERS_HELP = ("adapter store (default: OUT/adapters); runs that share one reuse each other's adapters "
                 "whenever scene, tune config, seed and base model match")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realfill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"realfill {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    fill = commands.add_parser("fill", help="fine-tune on one scene, sample seeds, write images and manifest")
    fill.add_argument("scene", help="scene folder or URI (RealBench layout)")
    fill.add_argument("--out", required=True, help="output folder or URI")
    fill.add_argument("--adapters", metavar="URI", help=ADAPTERS_HELP)
    fill.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(fill)
    fill.set_defaults(func=cmd_fill)

    run = commands.add_parser("run", help="complete every scene under a scenes root on a Ray cluster (or locally)")
    run.add_argument("scenes", help="scenes root: a folder or URI holding one folder per scene")
    run.add_argument("--out", required=True, help="output folder or URI (shared storage on a cluster)")
    run.add_argument("--adapters", metavar="URI", help=ADAPTERS_HELP)
    add_pipeline_flags(run)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    sweep = commands.add_parser("sweep", help="many variants of the config over a scenes root in one pipeline, "
                                               "each evaluated, compared in a leaderboard")
    sweep.add_argument("scenes", help="scenes root: a folder or URI holding one folder per scene")
    sweep.add_argument("--out", required=True, help="output folder or URI: shared adapters/ and samples/, "
                                                    "variants/NAME/, sweep.parquet, leaderboard.md")
    sweep.add_argument("--grid", metavar="FILE", help="YAML/JSON: grid: (field: [values], every combination a "
                                                      "variant), variants: (name: fields), base: (fields for all)")
    sweep.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                       help="a named variant and its flags, over the shared ones, e.g. 'fast:--fast --keep 8'")
    add_eval_flags(sweep, [name for name in EVAL_FLAGS if name != "device"])
    add_pipeline_flags(sweep)
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)

    rank = commands.add_parser("rank", help="rank completions of a scene by correspondence to its references")
    rank.add_argument("scene", help="scene folder or URI")
    rank.add_argument("images", nargs="+", help="completed images (target size), from any generator")
    rank.add_argument("--features", choices=FEATURES, help=f"feature type (default: {RankConfig().features})")
    rank.add_argument("--json", action="store_true", help="one JSON object per line: path, matches, score, rank")
    rank.set_defaults(func=cmd_rank)

    evaluate = commands.add_parser("eval", help="metrics of a run's samples against the scenes' gt.png")
    evaluate.add_argument("out", help="the run's output folder or URI (holds manifest/)")
    add_eval_flags(evaluate, EVAL_FLAGS)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)

    tiny = commands.add_parser("tiny-model", help="write the tiny random-weight inpainting model to DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_tiny_model)

    example = commands.add_parser("example", help="write the bundled example scenes root to DIR (two scenes)")
    example.add_argument("dir")
    example.set_defaults(func=cmd_example)
    return parser


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that a command ends as Ctrl-C does: cleanly, with its exit code."""


def terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser().parse_args(argv)
    args.argv = argv
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        check_environment()
        from realfill.models import quiet_libraries

        quiet_libraries()
        return args.func(args)
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
