"""Package structure of ``src/attnkd``, read from the source with ``ast`` (nothing imported).

Units are the subpackages (``attnkd.losses``, ``attnkd.engine``, ...) and the top-level modules
(``attnkd.distill``, ``attnkd.cli``, ...). Two rules hold for every import, including imports
inside functions and under ``TYPE_CHECKING`` (they are dependencies all the same):

- no unit imports another unit's private module or name (``attnkd.x._y``, ``from attnkd.x
  import _y``) - a private helper another package needs gets a public name first;
- the units form no cycle (``eval`` -> ``tasks`` -> ``eval`` and the like): what a package
  builds on sits below it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkd"


@dataclass(frozen=True)
class Edge:
    src: str  # importing unit
    dst: str  # imported unit
    target: str  # what was imported, e.g. attnkd.losses._mask or attnkd.losses.attention._x
    where: str  # file:line


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """'attnkd.losses.terms.base' -> 'losses'; 'attnkd.distill' -> 'distill'; 'attnkd' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_edges(root: Path = SRC) -> list[Edge]:
    """Every import of one attnkd unit by another under ``root`` (the attnkd package folder)."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(root, path)
        src = _unit(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] != root.name:
                    continue
                dst = _unit(target)
                if dst and dst != src:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    edges.append(Edge(src, dst, target, where))
    return edges


def private_imports(edges: list[Edge]) -> list[Edge]:
    """Edges that reach into another unit's private module or name (``_x``, not dunder)."""
    out = []
    for e in edges:
        inner = e.target.split(".")[2:]  # below the unit
        if any(p.startswith("_") and not p.startswith("__") for p in inner):
            out.append(e)
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _describe(group: list[str], edges: list[Edge]) -> str:
    inside = [e for e in edges if e.src in group and e.dst in group]
    seen, lines = set(), []
    for e in inside:
        if (e.src, e.dst) not in seen:
            seen.add((e.src, e.dst))
            lines.append(f"  {e.src} -> {e.dst}: {e.target} ({e.where})")
    return " <-> ".join(group) + "\n" + "\n".join(lines)


def test_no_unit_imports_another_units_private_parts():
    bad = private_imports(import_edges())
    assert not bad, "private imports across packages:\n" + "\n".join(
        f"  {e.where}: {e.src} imports {e.target}" for e in bad
    )


def test_the_packages_form_no_cycle():
    edges = import_edges()
    assert edges, "no imports found: is SRC right?"
    found = cycles(edges)
    assert not found, "package cycles:\n" + "\n".join(_describe(g, edges) for g in found)


def test_distill_is_task_agnostic():
    """The recipe runner re-exports nothing of a task (sentence helpers live in tasks/)."""
    tree = ast.parse((SRC / "distill.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("attnkd.tasks."), node.module
    exported = next(
        node.value for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") == "__all__" for t in node.targets)
    )  # fmt: skip
    names = {elt.value for elt in exported.elts}
    assert not names & {"EvalPairs", "GroupedBatches", "eval_pairs"}


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "attnkd"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "eval/__init__.py": "",
        "eval/run.py": "def f():\n    from attnkd.tasks.sentence import pairs\n",
        "tasks/__init__.py": "",
        "tasks/sentence.py": "from attnkd.eval import sts\n",
        "engine/__init__.py": "from . import loop\nfrom .loop import fit\n",
        "engine/loop.py": "import attnkd.errors\n",
        "errors.py": "",
    })  # fmt: skip
    edges = import_edges(root)
    assert cycles(edges) == [["eval", "tasks"]]
    assert {(e.src, e.dst) for e in edges} == {("eval", "tasks"), ("tasks", "eval"),
                                               ("engine", "errors")}  # fmt: skip


def test_checker_finds_private_imports_but_allows_them_inside_a_package(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "losses/__init__.py": "from attnkd.losses._mask import m\n",
        "losses/_mask.py": "",
        "losses/terms/x.py": "from attnkd.losses._mask import m\n",
        "report/html.py": "from attnkd.engine._atomic import atomic_dir\n",
        "report/plots.py": "from attnkd.losses import _mask\nfrom attnkd.losses import __all__\n",
        "engine/_atomic.py": "",
    })  # fmt: skip
    bad = private_imports(import_edges(root))
    assert sorted(e.target for e in bad) == ["attnkd.engine._atomic.atomic_dir",
                                             "attnkd.losses._mask"]  # fmt: skip


@pytest.mark.parametrize("relative", ["from .._mask import m\n", "from ..._atomic import x\n"])
def test_relative_imports_resolve(tmp_path, relative):
    root = _tree(tmp_path, {"losses/terms/x.py": relative, "losses/_mask.py": ""})
    edges = import_edges(root)
    if "_atomic" in relative:  # attnkd._atomic: a top-level unit of its own, not private to one
        assert [(e.src, e.dst) for e in edges] == [("losses", "_atomic")]
    else:
        assert edges == []  # inside the losses package
