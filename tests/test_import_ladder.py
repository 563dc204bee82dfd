"""The import ladder (docs: /DESIGN.md) as a test: imports only point down.

    floor 0  models, data_pipeline, configs   (independent of each other)
    floor 1  algorithms
    floor 2  distributed
    floor 3  training
    floor 4  cluster
    floor 5  experiments
    floor 6  bioscale: cli, commands, bench   (nothing below imports them)

Every .py file of the installed packages is parsed with `ast` (no project
module is imported, so this costs no torch): module-level and function-local
imports, relative imports resolved against the file's package, `from p import
m` counted as an import of the submodule `p.m` when there is one. Checked:

- no import points to a higher floor, or sideways between ground-floor packages;
- every `bioscale.*` import names a module that exists (a moved module whose
  importers were not updated fails here, not at the first run);
- the graph of module-level imports (those that run at import time, so
  `if TYPE_CHECKING:` blocks excluded) among the project's modules has no
  cycle; function-local imports may not close a cycle either, because one
  hides a circle rather than removing it. An import of a package's submodule
  is not counted as an import of the package's `__init__`.

The checker is plain functions over {module name: source}, so the last tests
feed it synthetic modules and make sure it would catch each kind of violation.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = "bioscale"

FLOORS = {
    "models": 0,
    "data_pipeline": 0,
    "configs": 0,
    "algorithms": 1,
    "distributed": 2,
    "training": 3,
    "cluster": 4,
    "experiments": 5,
}
CLI_FLOOR = 6  # bioscale itself: cli, commands, bench, __main__


# ------------------------------------------------------------------------------ the checker


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported project module
    line: int
    module_level: bool  # runs when `source` is imported
    type_checking: bool  # inside `if TYPE_CHECKING:` (never runs)

    def where(self) -> str:
        kind = "module-level" if self.module_level else "function-local"
        return f"{self.source}:{self.line} ({kind}) imports {self.target}"


def project_files(root: Path = ROOT) -> dict[str, Path]:
    """{module name: file} for every .py file of the packages: bioscale/ and each
    floor package's folder, installed as bioscale.<folder> (pyproject's package-dir)."""
    package_dirs = {TOP: TOP, **{f"{TOP}.{name}": name for name in FLOORS}}
    files: dict[str, Path] = {}
    for package, directory in package_dirs.items():
        for path in sorted((root / directory).rglob("*.py")):
            rel = path.relative_to(root / directory).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" in rel.parts or any(not p.isidentifier() for p in parts):
                continue
            name = ".".join([package, *parts])
            files.setdefault(name, path)  # bioscale/ holds no models/ etc.: no clash
    return files


def floor(module: str) -> int | None:
    """The ladder floor of a project module, None for anything else."""
    parts = module.split(".")
    if parts[0] != TOP:
        return None
    if len(parts) > 1 and parts[1] in FLOORS:
        return FLOORS[parts[1]]
    return CLI_FLOOR


def unit(module: str) -> str:
    """The package a module belongs to for the ladder: bioscale.<floor package>, or bioscale."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in FLOORS else TOP


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, source: str, *, is_package: bool, known: set[str]) -> tuple[list[Import], list[str]]:
    """The project imports in one module's source, and the `bioscale.*` names it
    imports that are no module (problems). `known` is the set of project modules."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    unknown: list[str] = []

    def resolve(level: int, name: str | None) -> str:
        if not level:
            return name or ""
        base = package.split(".")
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def add(target: str, node: ast.stmt, module_level: bool, type_checking: bool, *, names=()) -> None:
        if target.split(".")[0] != TOP:
            return
        targets = []
        for alias in names:  # `from p import m`: the submodule p.m where there is one
            sub = f"{target}.{alias}"
            if sub in known:
                targets.append(sub)
            elif target not in targets:
                targets.append(target)
        for t in targets or [target]:
            if t not in known:
                unknown.append(f"{module}:{node.lineno} imports {t}, which is no module of the project")
                continue
            if t != module:
                found.append(Import(module, t, node.lineno, module_level, type_checking))

    def visit(nodes: list[ast.stmt], module_level: bool, type_checking: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node, module_level, type_checking)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node.level, node.module)
                add(target, node, module_level, type_checking, names=[a.name for a in node.names if a.name != "*"])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(node.body, False, type_checking)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, module_level, True)
                visit(node.orelse, module_level, type_checking)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([c for c in children if isinstance(c, ast.AST)], module_level, type_checking)

    visit(ast.parse(source).body, True, False)
    return found, unknown


def collect(sources: dict[str, tuple[str, bool]]) -> tuple[list[Import], list[str]]:
    """All project imports of {module: (source, is_package)}, and the unknown ones."""
    known = set(sources)
    edges: list[Import] = []
    unknown: list[str] = []
    for module, (source, is_package) in sorted(sources.items()):
        found, bad = imports_of(module, source, is_package=is_package, known=known)
        edges += found
        unknown += bad
    return edges, unknown


def ladder_violations(edges: list[Import]) -> list[str]:
    problems = []
    for imp in edges:
        src, dst = floor(imp.source), floor(imp.target)
        if src is None or dst is None:
            continue
        if dst == CLI_FLOOR and src != CLI_FLOOR:
            problems.append(f"imports the CLI layer (bioscale.cli/commands/bench): {imp.where()}")
        elif dst > src:
            problems.append(f"upward: {imp.where()} (floor {src} -> floor {dst})")
        elif dst == src == 0 and unit(imp.source) != unit(imp.target):
            problems.append(f"sideways on the ground floor: {imp.where()}")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def graph_of(edges: list[Import], *, module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in edges:
        if imp.type_checking or (module_level_only and not imp.module_level):
            continue
        graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def describe(cycle: list[str], edges: list[Import]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        imp = next(e for e in edges if e.source == a and e.target == b and not e.type_checking)
        steps.append(f"  {imp.where()}")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


# ------------------------------------------------------------------------------ the project


def _project() -> tuple[list[Import], list[str]]:
    files = project_files()
    sources = {name: (path.read_text(encoding="utf-8"), path.name == "__init__.py") for name, path in files.items()}
    return collect(sources)


EDGES, UNKNOWN = _project()


def test_the_packages_are_found():
    modules = set(project_files())
    for name in (
        "bioscale.models",
        "bioscale.data_pipeline.readers",
        "bioscale.training.config",
        "bioscale.cluster",
        "bioscale.experiments.report",
        "bioscale.cli",
        "bioscale.commands.prepare",
        "bioscale.bench.data",
        "bioscale.configs",
    ):
        assert name in modules
    assert len(EDGES) > 50


def test_the_ladder_covers_every_installed_package():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    mapped = dict(re.findall(r'^"bioscale\.(\w+)" = "(\w+)"$', text, flags=re.M))
    assert mapped == {name: name for name in FLOORS}


def test_imports_name_existing_modules():
    assert not UNKNOWN, "\n".join(UNKNOWN)


def test_imports_only_point_down_the_ladder():
    problems = ladder_violations(EDGES)
    assert not problems, "\n".join(problems)


def test_the_top_package_imports_nothing_of_the_project():
    # `import bioscale.<anything>` runs bioscale/__init__.py first: it must stay empty.
    offending = [imp.where() for imp in EDGES if imp.source == TOP]
    assert not offending, "\n".join(offending)


def test_no_import_cycle_at_module_level():
    cycle = find_cycle(graph_of(EDGES, module_level_only=True))
    assert cycle is None, "import cycle: " + describe(cycle, EDGES)


def test_no_import_cycle_through_function_local_imports():
    cycle = find_cycle(graph_of(EDGES, module_level_only=False))
    assert cycle is None, "import cycle (closed by a function-local import): " + describe(cycle, EDGES)


# ------------------------------------------------------------------------------ the checker catches


def _synthetic(modules: dict[str, str]) -> tuple[list[Import], list[str]]:
    packages = {m.rpartition(".")[0] for m in modules if "." in m}
    sources = {m: (src, m in packages) for m, src in modules.items()}
    for package in packages - set(modules):
        sources[package] = ("", True)
    return collect(sources)


def test_checker_catches_an_upward_import():
    edges, unknown = _synthetic(
        {
            "bioscale.training.loop": "x = 1\n",
            "bioscale.cluster.sweep": "from bioscale.training import loop\n",  # down: fine
            "bioscale.models.net": "import json\nfrom bioscale.training.loop import x\n",  # up at module level
            "bioscale.algorithms.rule": "def f():\n    from bioscale.cluster import sweep\n",  # up, function-local
        }
    )
    assert not unknown
    problems = ladder_violations(edges)
    assert len(problems) == 2, problems
    assert any("bioscale.models.net:2 (module-level) imports bioscale.training.loop" in p for p in problems)
    assert any("bioscale.algorithms.rule:2 (function-local) imports bioscale.cluster.sweep" in p for p in problems)


def test_checker_catches_sideways_cli_and_relative_imports():
    edges, _ = _synthetic(
        {
            "bioscale.data_pipeline.reader": "from ..models import net\n",  # relative, sideways
            "bioscale.models.net": "",
            "bioscale.experiments.run": "from bioscale.commands import train\n",  # imports the CLI
            "bioscale.commands.train": "from bioscale.experiments import run\n",  # the CLI may import below
        }
    )
    problems = ladder_violations(edges)
    assert len(problems) == 2, problems
    assert any("sideways" in p and "bioscale.models.net" in p for p in problems)
    assert any("CLI layer" in p and "bioscale.commands.train" in p for p in problems)


def test_checker_catches_a_cycle_and_reports_its_path():
    edges, _ = _synthetic(
        {
            "bioscale.data_pipeline.readers": "from .dali import DaliReader\nclass Reader: ...\n",
            "bioscale.data_pipeline.dali": "from .wds import decode\n",
            "bioscale.data_pipeline.wds": "from bioscale.data_pipeline.readers import Reader\n",
            "bioscale.data_pipeline.plan": "from . import readers\n",
        }
    )
    assert not ladder_violations(edges)
    cycle = find_cycle(graph_of(edges, module_level_only=True))
    assert cycle == [
        "bioscale.data_pipeline.dali",
        "bioscale.data_pipeline.wds",
        "bioscale.data_pipeline.readers",
        "bioscale.data_pipeline.dali",
    ]
    assert "bioscale.data_pipeline.wds:1 (module-level) imports bioscale.data_pipeline.readers" in describe(
        cycle, edges
    )


def test_checker_catches_a_cycle_hidden_in_a_function_and_skips_type_checking():
    edges, _ = _synthetic(
        {
            "bioscale.data_pipeline.sources": "def open_source():\n    from .imagefiles import open_files\n",
            "bioscale.data_pipeline.imagefiles": "from .sources import Source\n",
            "bioscale.training.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n",
            "bioscale.training.b": "from bioscale.training import a\n",
        }
    )
    assert find_cycle(graph_of(edges, module_level_only=True)) is None
    assert find_cycle(graph_of(edges, module_level_only=False)) == [
        "bioscale.data_pipeline.imagefiles",
        "bioscale.data_pipeline.sources",
        "bioscale.data_pipeline.imagefiles",
    ]


def test_checker_catches_an_import_of_a_missing_module():
    _, unknown = _synthetic(
        {"bioscale.training.checkpoint": "from bioscale.training.atomic_files import atomic_open\n"}
    )
    assert unknown == [
        "bioscale.training.checkpoint:1 imports bioscale.training.atomic_files, which is no module of the project"
    ]
