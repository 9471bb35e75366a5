"""The package's layers (docs/architecture.md#layers): every import, module-level or inside a
function, points to the same or a lower layer, no two modules import each other (directly or
round a loop), and no module imports another module's private (`_`-prefixed) names.

The imports are read with `ast`, so nothing is executed; each problem names the file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import from its own layer or any layer below it. Each entry is a
# module or a package (with everything in it); a top-level name (`specmae`) is the root package's
# __init__ alone.
LAYERS = [
    ("specmae.version", "specmae.schema", "specmae.files", "specmae.outputs", "specmae.procs", "specmae.precision", "specmae.allocator"),
    ("specmae.audio",),
    ("specmae.masking",),
    ("specmae.model",),
    ("specmae.config",),
    ("specmae.checkpoint",),
    ("specmae.features",),
    ("specmae.evaluation",),
    ("specmae.visualize",),
    ("specmae.training",),
    ("specmae.hear",),
    ("specmae.cli",),
    ("specmae",),
]


@dataclass(frozen=True)
class Import:
    module: str     # the importing module, dotted
    target: str     # the module it depends on, dotted
    name: str       # the name taken from the target ('' for `import target`)
    where: str      # file:line


def modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `src`."""
    out = {}
    for path in sorted((src / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(src: Path, package: str) -> list[Import]:
    """Every import of one of `package`'s modules by another, with relative imports resolved and
    `from pkg import module` read as a dependency on that module."""
    known = modules(src, package)
    found = []
    for module, path in known.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(src)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [Import(module, a.name, "", where) for a in node.names if a.name.split(".")[0] == package]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] != package:
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append(Import(module, sub, "", where) if sub in known else Import(module, base, a.name, where))
    return found


def layer_of(module: str, layers) -> int | None:
    matches = [(len(unit), i) for i, units in enumerate(layers) for unit in units
               if module == unit or (module.startswith(unit + ".") and "." in unit)]
    return max(matches)[1] if matches else None


def cycles(found: list[Import]) -> list[list[Import]]:
    """Loops in the module graph, each as the imports that close it (Tarjan's components)."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in found:
        if imp.target != imp.module:
            graph.setdefault(imp.module, {}).setdefault(imp.target, imp)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [[imp for v in sorted(c) for w, imp in sorted(graph[v].items()) if w in c] for c in components]


def problems(src: Path, package: str, layers) -> list[str]:
    """What breaks the layering of `package` under `src`, one line per import: file:line, what."""
    found = imports(src, package)
    out = [f"{path.relative_to(src)}: {m} is in no layer; add it to LAYERS"
           for m, path in modules(src, package).items() if layer_of(m, layers) is None]
    for imp in found:
        mine, theirs = layer_of(imp.module, layers), layer_of(imp.target, layers)
        if mine is not None and theirs is not None and theirs > mine:
            out.append(f"{imp.where}: {imp.module} imports {imp.target}, a higher layer "
                       f"({theirs}: {', '.join(layers[theirs])} above {mine}: {', '.join(layers[mine])})")
        if imp.name.startswith("_") and not imp.name.startswith("__"):
            out.append(f"{imp.where}: {imp.module} imports the private name {imp.name} of {imp.target}")
    for loop in cycles(found):
        out.append("import loop: " + "; ".join(f"{i.where}: {i.module} -> {i.target}" for i in loop))
    return out


def test_specmae_imports_follow_the_layers():
    assert modules(SRC, "specmae"), SRC
    found = problems(SRC, "specmae", LAYERS)
    assert not found, "\n".join(found)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_upward_imports_loops_and_private_names(tmp_path):
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "def _secret():\n    pass\n",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "from . import b\n",
        "pkg/low/b.py": "def f():\n    from .a import g  # a lazy import is still a dependency\n",
        "pkg/low/up.py": "import os\n\n\ndef f():\n    from ..high import h\n",
        "pkg/high.py": "from .base import _secret\nfrom .low import a\n",
    })
    layers = [("pkg.base",), ("pkg.low",), ("pkg.high",), ("pkg",)]
    found = problems(tmp_path, "pkg", layers)
    up = [p for p in found if "a higher layer" in p]
    assert len(up) == 1 and up[0].startswith(str(Path("pkg/low/up.py"))) and ":5: pkg.low.up imports pkg.high" in up[0]
    private = [p for p in found if "private" in p]
    assert len(private) == 1 and ":1: pkg.high imports the private name _secret of pkg.base" in private[0]
    loops = [p for p in found if p.startswith("import loop")]
    assert len(loops) == 1 and "pkg.low.a -> pkg.low.b" in loops[0] and "pkg.low.b -> pkg.low.a" in loops[0]
    assert ":2: pkg.low.b -> pkg.low.a" in loops[0]
    assert len(found) == 3, found
    # A module outside every layer is reported too, and the fixed tree passes.
    write(tmp_path, {"pkg/low/up.py": "import os\n", "pkg/high.py": "from .low import a\n",
                     "pkg/low/b.py": "X = 1\n", "pkg/extra.py": ""})
    assert problems(tmp_path, "pkg", layers) == [f"{Path('pkg/extra.py')}: pkg.extra is in no layer; add it to LAYERS"]
    assert problems(tmp_path, "pkg", layers + [("pkg.extra",)]) == []
