"""House rules that keep the code base readable, checked on every run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400  # STYLE.md rule 1: past 400, split


def test_no_module_passes_400_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("statefuldata", "trainer")
        for path in (ROOT / package).rglob("*.py")
    }
    assert sizes  # the packages are where they should be
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"split these modules by concept (over {MAX_LINES} lines): {too_big}"


def test_statefuldata_never_imports_trainer() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "statefuldata").rglob("*.py")
        if any(
            line.lstrip().startswith(("import trainer", "from trainer"))
            for line in path.read_text().splitlines()
        )
    ]
    assert not offenders, f"statefuldata must not import trainer (DESIGN.md 1): {offenders}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the two packages it imports (anywhere in it, TYPE_CHECKING too)."""
    paths = {
        _module_name(path): path
        for package in ("statefuldata", "trainer")
        for path in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule when there is one, else pkg itself.
                subs = {f"{base}.{alias.name}" for alias in node.names} & paths.keys()
                targets.update(subs or {base})
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        trail: list[str] = []
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        on_trail = {root}
        trail.append(root)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                on_trail.discard(trail.pop())
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_trail:
                return [*trail[trail.index(nxt) :], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph[nxt])))
                on_trail.add(nxt)
                trail.append(nxt)
    return None


def test_the_module_import_graph_is_acyclic() -> None:
    graph = _import_graph()
    assert "statefuldata.loader" in graph["statefuldata"]  # the graph sees the package's imports
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    cycle = _find_cycle(graph)
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle or [])}"
