"""The structure the code promises: layers that import only downwards, and one module naming every path."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = [
    ("realfill.config",),
    ("realfill.data", "realfill.environment", "realfill.devices"),
    ("realfill.geometry",),
    ("realfill.selection",),
    ("realfill.method",),
    ("realfill.evaluation",),
    ("realfill.stages", "realfill.plan", "realfill.fill", "realfill.example"),
    ("pipeline",),
    ("realfill.cli", "jobs"),
]
"""Lowest first: data <- geometry <- selection <- method <- evaluation <- orchestration <- Ray <- the command."""


def layer(module: str) -> int:
    found = [index for index, prefixes in enumerate(LAYERS)
             if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)]
    assert found, f"{module} has no layer: give it one in LAYERS"
    return found[0]


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
            for package in ("realfill", "pipeline", "jobs") for path in (REPO / package).rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every realfill, pipeline or jobs module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("realfill", "pipeline", "jobs")}


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{module} imports {name}" for module, path in modules().items() for name in imported(path)
              if name not in ("realfill", "pipeline", "jobs") and layer(name) > layer(module)]
    assert not upward, upward


def test_the_paths_of_scenes_and_outputs_are_named_in_the_layout_module_alone():
    files = r"target\.png|mask\.png|gt\.png|metrics\.parquet|requests\.parquet|sweep\.parquet|leaderboard\.md|_journal"
    folders = r"adapters|samples|manifest|logs|filled|variants|scenes|ref|target"
    spelled = re.compile(rf"""["']({files})["']|join\([^)]*["']({folders})["']""")
    found = [f"{path.relative_to(REPO)}: {match[0]}" for module, path in modules().items()
             if module != "realfill.data.layout" for match in spelled.finditer(path.read_text())]
    assert not found, found
