"""Is the installed environment one that realfill can run in? Checked once at start, so that a wrong
library version is one clear line naming the package, the installed version and the fix, instead of a
library traceback in every scene.

The ranges checked are realfill's own declared requirements (pyproject.toml, as installed), which
exclude the releases known to break it; the versions tested together are in the lock, constraints.txt.
"""

from __future__ import annotations

import functools
from importlib import metadata

from packaging.requirements import Requirement

from realfill.data.runlog import InputError

DISTRIBUTION = "realfill"
FIX = "pip install -c constraints.txt -e . (from a realfill checkout: the versions its tests ran with)"


class BrokenEnvironment(InputError, RuntimeError):
    """The installed libraries do not satisfy realfill's requirements; the message says which and how to fix."""


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def requirement_problems(requirements: list[str], extras: tuple[str, ...] = ()) -> list[str]:
    """One line per requirement that the installed distributions do not satisfy."""
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        wanted = ("",) + extras
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in wanted):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed; realfill needs {requirement.name}"
                            f"{requirement.specifier}. Fix: {FIX}")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} is installed; realfill needs {requirement.name}"
                            f"{requirement.specifier}. Fix: pip install '{requirement.name}{requirement.specifier}',"
                            f" or {FIX}")
    return problems


@functools.cache
def check_environment() -> None:
    """Raise BrokenEnvironment naming every unsatisfied requirement (once per process)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise BrokenEnvironment(f"realfill is not installed as a package. Fix: {FIX}") from None
    problems = requirement_problems(requirements)
    if problems:
        raise BrokenEnvironment("broken environment: " + "; ".join(problems))
