"""The package layout is the pipeline: no module imports from a stage after its own, the
search imports neither the records nor the cost model, there is no import cycle, and README's
module map names every folder.

The import graph is read from the source with `ast` (every import, those inside functions
too), `from package import name` counting as an import of `package.name` where that is a
module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "records", "costmodel", "templates")

# the stages in the order data flows (tuner/__init__.py); a module may import its own stage's
# modules and those of earlier stages
STAGES = (
    ("tuner.errors", "tuner.version", "tuner.buffers"),
    ("tuner.ir", "templates"),
    ("tuner.codegen",),
    ("tuner.measure", "records", "costmodel"),
    ("tuner.search",),
    ("tuner.replay",),
    ("tuner.network", "tuner.plot"),
    ("tuner.cli", "tuner"),
)
# imports that the stage order allows but the design does not: the search gets its records
# store and cost model passed in
FORBIDDEN = (("tuner.search", "records"), ("tuner.search", "costmodel"),
             ("tuner.network.tuning", "records"), ("tuner.network.tuning", "costmodel"),
             ("records", "templates"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def stage_of(module: str) -> int:
    matches = [(len(prefix), i) for i, stage in enumerate(STAGES) for prefix in stage
               if _within(module, prefix)]
    assert matches, f"{module} is in no stage of the layout"
    return max(matches)[1]


def test_every_module_belongs_to_a_stage_and_imports_no_later_stage():
    graph = _graph()
    upward = [f"{a} ({stage_of(a)}) imports {b} ({stage_of(b)})"
              for a, deps in graph.items() for b in deps if stage_of(b) > stage_of(a)]
    assert not upward, "\n".join(upward)


def test_the_search_is_given_its_store_and_cost_model():
    graph = _graph()
    found = [f"{a} imports {b}" for a, deps in graph.items() for b in deps
             for low, high in FORBIDDEN if _within(a, low) and _within(b, high)]
    assert not found, "\n".join(found)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep in graph and dep not in state:
                cycle = walk(dep)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = walk(module)
            assert cycle is None, " -> ".join(cycle)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The checks above can fail: an import of the network front end from the IR is a later
    stage, and two modules importing each other are a cycle."""
    assert stage_of("tuner.ir.task") < stage_of("tuner.network.graph")
    assert stage_of("templates.conv2d") == stage_of("tuner.ir.dag")
    source = tmp_path / "m.py"
    source.write_text("from tuner.network import graph\nimport records.store\n")
    modules = {"tuner.network.graph": source, "records.store": source}
    assert _imports(source, modules) == {"tuner.network.graph", "records.store"}


@pytest.mark.parametrize("folder", sorted(p.name for p in (ROOT / "tuner").iterdir()
                                          if (p / "__init__.py").exists()))
def test_readme_module_map_names_every_folder(folder):
    readme = (ROOT / "README.md").read_text()
    assert f"tuner/{folder}/" in readme.split("## Module map", 1)[-1], folder
