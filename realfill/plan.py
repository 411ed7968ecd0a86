"""The plan of a run: its scenes under its variants as units, and the stage calls they need, shared by key.

Pure: it reads no scene and knows nothing of Ray. Every sharing key is known before any scene is read (keys
name the scene by URI and the settings that decide the output), so the calls of a whole run, and which
units each feeds, are decided here; `realfill fill` and the Ray driver only run them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from realfill.stages import SAMPLE, STAGES, Stage, Unit, Variant


@dataclass
class Plan:
    """A run's units, grouped by scene (the variants of a scene are started together), and its calls."""

    groups: list[list[Unit]]
    feeds: Counter[tuple[Stage, str]] = field(default_factory=Counter)
    """How many units each call (stage, key) feeds."""

    @property
    def units(self) -> list[Unit]:
        return [unit for group in self.groups for unit in group]

    def totals(self) -> dict[Stage, int]:
        """Units that go through each stage (what progress counts against)."""
        return {stage: sum(stage in unit.keys for unit in self.units) for stage in STAGES}

    def calls(self, stage: Stage) -> int:
        """Calls of a stage the run makes, each shared by the units of one key."""
        return sum(1 for (other, _) in self.feeds if other is stage)


def plan_run(scene_uris: list[str], variants: list[Variant], done: set[tuple[str, str]] = frozenset()) -> Plan:
    """Every scene under every variant, but those in done ((variant name, scene URI) already complete): each
    unit's stages and their keys, the units each call feeds, and the seeds a shared sample call makes (the
    most that any unit sharing it asks for)."""
    groups = [[Unit(uri, variant) for variant in variants if (variant.name, uri) not in done] for uri in scene_uris]
    plan = Plan([group for group in groups if group])
    seeds: dict[str, int] = {}
    for unit in plan.units:
        for stage in STAGES:
            if stage.needed(unit.config):
                unit.keys[stage] = stage.key(unit)
                plan.feeds[(stage, unit.keys[stage])] += 1
        if SAMPLE in unit.keys:
            key = unit.keys[SAMPLE]
            seeds[key] = max(seeds.get(key, 0), unit.config.sample.num_samples)
    for unit in plan.units:
        if SAMPLE in unit.keys:
            unit.seeds[SAMPLE] = seeds[unit.keys[SAMPLE]]
    return plan
