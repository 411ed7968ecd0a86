"""A RealBench sweep: the same scenes under several sampling/ranking variants, each run evaluated,
with one table comparing them. Variants share their adapters (the adapter cache key ignores sampling
and ranking), so only the first variant trains.

    ray job submit --address http://HEAD:8265 -- python -m jobs.realbench_sweep s3://bucket/realbench \
        --out s3://bucket/sweep --variant "paper:" --variant "fast:--fast" --variant "keep-all:--keep-fraction 1"

Arguments after the variants' own flags are shared by every variant (`--base-model`, `--train-steps`, ...).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from realfill import storage
from realfill.cli import main as realfill
from realfill.config import EvalConfig
from realfill.evaluate import evaluate_run, markdown_summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jobs.realbench_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("scenes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:FLAGS",
                        help="a named variant and its realfill run flags, e.g. 'fast:--fast --keep 8'")
    args, shared = parser.parse_known_args(argv)
    reports, failures = [], 0
    for variant in args.variant:
        name, _, flags = variant.partition(":")
        out = storage.join(args.out, name)
        failures += realfill(["run", args.scenes, "--out", out, "--adapters", storage.join(args.out, "adapters"),
                              *shared, *shlex.split(flags)]) != 0
        table, unavailable, _ = evaluate_run(out, EvalConfig(), show_progress=False)
        reports.append(f"## {name} (`{flags.strip() or 'defaults'}`)\n\n{markdown_summary(table, unavailable)}\n")
    report = "\n".join(reports)
    storage.write_bytes(storage.join(args.out, "sweep.md"), report.encode())
    print(report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
