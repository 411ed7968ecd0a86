"""Fill a photo library (`realfill library`) with the fast sampling preset (explicit --sample.scheduler /
--sample.steps flags still win). Submit it to a cluster (RAY_ADDRESS is set inside a Ray job, so it joins
that cluster):

    ray job submit --address http://HEAD:8265 -- \
        python -m jobs.fill_library s3://bucket/library --out s3://bucket/filled --requests s3://bucket/requests.csv

Every `realfill library` flag works here too (`--outpaint 1.5`, `--max_refs 3`, `--method stitch`, ...).
"""

from __future__ import annotations

import sys

from realfill.cli import main as realfill


def main(argv: list[str]) -> int:
    return realfill(["library", *argv, "--fast"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
