"""Progress people can read, in a terminal and in `ray job logs` alike: per stage, the run's units (scenes,
or scenes under each variant in a sweep) that have passed it, against the run's total for that stage, which
is known at the start and never changes (a unit that fails counts as passed for the stages it will not reach,
so counts never go backwards and end at the total). Only the stages some unit goes through are shown. On a
terminal: one bar per stage; otherwise (a log, `ray job logs`): a plain line now and then, no cursor escapes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from tqdm.auto import tqdm

LINE_S = 10.0
"""Seconds between plain progress lines (and one at the start and one at the end)."""


class Progress:
    def __init__(self, title: str, totals: dict[str, int], show: bool = True, stream=None):
        self.title = title
        self.totals = {stage: total for stage, total in totals.items() if total}
        self.passed: Counter[str] = Counter()
        self.failed = 0
        self.stream = stream or sys.stderr
        self.show = show
        self.tty = show and self.stream.isatty()
        self.bars = {stage: tqdm(total=total, desc=f"{stage:>6}", position=position, unit="scene", file=self.stream,
                                 dynamic_ncols=True)
                     for position, (stage, total) in enumerate(self.totals.items())} if self.tty else {}
        self.last = 0.0
        self.say(force=True)

    def advance(self, stage: str, count: int = 1) -> None:
        if stage not in self.totals:
            return
        self.passed[stage] += count
        if stage in self.bars:
            self.bars[stage].update(count)
        self.say()

    def fail(self, stages: list[str]) -> None:
        """A unit failed: it counts as passed for the stages it will not reach now."""
        self.failed += 1
        for bar in self.bars.values():
            bar.set_postfix(failed=self.failed)
        for stage in stages:
            self.advance(stage)

    def line(self) -> str:
        counts = ", ".join(f"{stage} {self.passed[stage]}/{total}" for stage, total in self.totals.items())
        return f"{self.title}: {counts}" + (f" (failed {self.failed})" if self.failed else "")

    def say(self, force: bool = False) -> None:
        if self.show and not self.tty and (force or time.monotonic() - self.last >= LINE_S):
            print(self.line(), file=self.stream, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.say(force=True)
