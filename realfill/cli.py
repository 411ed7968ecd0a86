"""The `realfill` command: one typed function per subcommand. Defaults come from realfill.config."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from realfill import storage
from realfill.config import FAST_SAMPLING, FillConfig, SampleConfig, TuneConfig, field_docs, read_config_file

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
}
SECTIONS = {None: FillConfig, "tune": TuneConfig, "sample": SampleConfig}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The config flags, typed and documented from the dataclasses (their defaults are not restated)."""
    defaults = {None: FillConfig(), "tune": TuneConfig(), "sample": SampleConfig()}
    group = parser.add_argument_group("config (defaults: the paper's recipe)")
    for flag, targets in CONFIG_FLAGS.items():
        section, name = targets[0]
        default = getattr(defaults[section], name)
        doc = field_docs(SECTIONS[section]).get(name, "")
        group.add_argument(f"--{flag.replace('_', '-')}", type=type(default), default=None,
                           help=f"{doc} (default: {default})")
    group.add_argument("--fast", action="store_true",
                       help=f"fast sampling preset: {FAST_SAMPLING} (explicit flags still win)")
    group.add_argument("--config", metavar="FILE",
                       help="YAML/JSON with the same fields as these flags (e.g. train_steps: 100), "
                            "plus optional tune:/sample: sections holding any field of TuneConfig/SampleConfig")


def build_config(args: argparse.Namespace) -> FillConfig:
    """Defaults, then --fast, then the config file, then explicit flags."""
    values: dict[str | None, dict[str, Any]] = {None: {}, "tune": {}, "sample": {}}
    if args.fast:
        values["sample"].update(FAST_SAMPLING)
    if args.config:
        data = read_config_file(args.config)
        if data.pop("fast", False):
            values["sample"].update(FAST_SAMPLING)
        for section in ("tune", "sample"):
            values[section].update(data.pop(section, None) or {})
        for key, value in data.items():
            flag = key.replace("-", "_")
            if flag not in CONFIG_FLAGS:
                raise ValueError(f"{args.config}: unknown field '{key}' (known: {', '.join(CONFIG_FLAGS)})")
            for section, name in CONFIG_FLAGS[flag]:
                values[section][name] = value
    for flag, targets in CONFIG_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            for section, name in targets:
                values[section][name] = value
    try:
        return FillConfig(tune=TuneConfig(**values["tune"]), sample=SampleConfig(**values["sample"]), **values[None])
    except TypeError as exc:
        raise ValueError(f"config: {exc}") from None


def cmd_fill(args: argparse.Namespace) -> int:
    from realfill.fill import fill_scene

    config = build_config(args)
    row = fill_scene(args.scene, args.out, config, show_progress=not args.quiet)
    if row["status"] != "ok":
        print(f"realfill: {row['scene_id']} failed: {row['error']}", file=sys.stderr)
        return 1
    print(f"{row['scene_id']}: {row['num_samples']} samples in {row['tune_s']:.1f}s tune + "
          f"{row['sample_s']:.1f}s sample; manifest in {storage.join(args.out, 'manifest')}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from realfill.models import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from realfill.example import write_example

    print(write_example(args.dir))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realfill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    fill = commands.add_parser("fill", help="fine-tune on one scene, sample seeds, write images and manifest")
    fill.add_argument("scene", help="scene folder or URI (RealBench layout)")
    fill.add_argument("--out", required=True, help="output folder or URI")
    fill.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(fill)
    fill.set_defaults(func=cmd_fill)

    tiny = commands.add_parser("tiny-model", help="write the tiny random-weight inpainting model to DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_tiny_model)

    example = commands.add_parser("example", help="write the bundled example scene to DIR")
    example.add_argument("dir")
    example.set_defaults(func=cmd_example)
    return parser


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' loading chatter is noise here."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"realfill: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
