"""A RealBench sweep: the same scenes under many variants of the config, in ONE pipeline run (equal
training done once, samplers serving every variant, ranking per variant), then every variant evaluated:
OUT/sweep.parquet and OUT/leaderboard.md (variants × metrics, all and selected seeds, the paper's row).

    ray job submit --address http://HEAD:8265 -- python -m jobs.realbench_sweep s3://bucket/realbench \
        --out s3://bucket/sweep --grid jobs/realbench_grid.yaml --eval.dino_model facebook/dino-vitb16

Variants come from a grid file (`grid:` field -> values, `variants:` name -> fields, `base:`) and/or
`--variant "NAME:FLAGS"`; every other `realfill run` flag is shared by all variants. This is `realfill sweep`.
"""

from __future__ import annotations

import sys

from realfill.cli import main as realfill


def main(argv: list[str]) -> int:
    return realfill(["sweep", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
