"""The environment: installed from the lock, Python support as declared, and a broken one named at start."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from realfill import environment
from realfill.cli import main

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCKED_EXTRAS = ("dev", "s3", "gcs")


def lock() -> list[Requirement]:
    """constraints.txt as requirements, each `name==version ; marker`."""
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith((" ", "#"))]


def test_every_requirement_is_locked_within_its_range():
    pins = {}
    for pin in lock():
        if pin.marker is None or pin.marker.evaluate():
            pins[pin.name] = Version(next(iter(pin.specifier)).version)
    wanted = list(PROJECT["dependencies"])
    for extra in LOCKED_EXTRAS:
        wanted += PROJECT["optional-dependencies"][extra]
    for text in wanted:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


def test_this_environment_is_the_lock():
    """What the tests run with is what the lock says (so CI installed from it, and the lock is what was tested)."""
    checked = 0
    for pin in lock():
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        try:
            installed = Version(metadata.version(pin.name))
        except metadata.PackageNotFoundError:
            continue  # e.g. the CUDA libraries of the GPU build of torch
        assert Version(installed.public) == Version(next(iter(pin.specifier)).version), pin.name
        checked += 1
    assert checked > 50


def test_known_broken_releases_are_excluded():
    transformers = next(Requirement(text) for text in PROJECT["dependencies"] if text.startswith("transformers"))
    assert not transformers.specifier.contains("5.24.0"), "transformers 5.24 refuses every released peft"


def test_python_support_is_what_the_dependencies_allow():
    """The oldest Python we claim is the newest of our dependencies' own lower bounds, and the README says it."""
    def lowest(spec: str) -> Version:
        return max(Version(item.version) for item in SpecifierSet(spec) if item.operator == ">=")

    needed = max(lowest(metadata.metadata(Requirement(dependency).name)["Requires-Python"] or ">=0")
                 for dependency in PROJECT["dependencies"])
    assert lowest(PROJECT["requires-python"]) == needed
    assert f"Python ≥ {needed.major}.{needed.minor}" in (REPO / "README.md").read_text()


def test_requirement_problems_name_package_version_and_fix():
    numpy = metadata.version("numpy")
    problems = environment.requirement_problems([f"numpy<{numpy}", "no-such-package-here>=1",
                                                 "moto>=999 ; extra == 'dev'", "numpy>=1"])
    assert len(problems) == 2
    assert problems[0].startswith(f"numpy {numpy} is installed; realfill needs numpy<{numpy}. Fix: pip install")
    assert problems[1].startswith("no-such-package-here is not installed")
    assert environment.requirement_problems(["moto>=999 ; extra == 'dev'"], extras=("dev",))


def test_a_broken_environment_is_one_clear_error_before_any_work(monkeypatch, capsys, tmp_path):
    environment.check_environment.cache_clear()
    real = metadata.requires
    monkeypatch.setattr(environment.metadata, "requires",
                        lambda name: real(name) + ["transformers!=" + metadata.version("transformers")])
    try:
        assert main(["example", str(tmp_path / "example")]) == 2
    finally:
        environment.check_environment.cache_clear()
    error = capsys.readouterr().err
    assert re.search(r"transformers \S+ is installed; realfill needs transformers!=\S+\. Fix: ", error), error
    assert "Traceback" not in error and not (tmp_path / "example").exists()
    monkeypatch.undo()
    environment.check_environment()  # the real environment is fine


def test_version_flag():
    result = subprocess.run([sys.executable, "-m", "realfill.cli", "--version"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == f"realfill {PROJECT['version']}"
