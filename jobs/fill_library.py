"""Fill a photo library: every scene folder under a root, sampling with the fast preset (explicit
--sample.scheduler / --sample.steps flags still win). Submit it to a cluster (RAY_ADDRESS is set inside a Ray
job, so it joins that cluster):

    ray job submit --address http://HEAD:8265 -- \
        python -m jobs.fill_library s3://bucket/library --out s3://bucket/filled

Every `realfill run` flag works here too (`--rank.keep 4`, `--sample.num_samples 32`, `--config run.yaml`, ...).
"""

from __future__ import annotations

import sys

from realfill.cli import main as realfill


def main(argv: list[str]) -> int:
    return realfill(["run", *argv, "--fast"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
