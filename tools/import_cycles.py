"""Import cycles and floor breaches among the project's modules: `python tools/import_cycles.py [ROOT]`.

Every import counts, at the top of a module or inside a function. Modules: mlp/*.py as mlp.X,
backends/*.py as mlp.backends.X, bench/*.py as mlp.bench.X (where `pip install -e .` puts them).
A cycle is a group of modules that import each other, directly or round about. A breach is a
module importing from a floor above its own (docs/architecture.md): each floor may import only
from itself and the floors below. Prints both; exit status 1 when there is any.
"""

import ast
import sys
from pathlib import Path

PLACES = {"mlp": "mlp", "backends": "mlp.backends", "bench": "mlp.bench"}

#: the floors, top first; a module not named here is on the floor of its package (bench: top)
FLOORS = {
    "top": ["mlp.bench"],
    "commands": ["mlp.train", "mlp.evaluate", "mlp.predict", "mlp.convert", "mlp.cli", "mlp.estimator",
                 "mlp.estimator_inputs"],
    "run": ["mlp.loop", "mlp.history", "mlp.progress", "mlp.scoring", "mlp.summary", "mlp.saver", "mlp.rows",
            "mlp.plots", "mlp.runlog"],
    "devices": ["mlp.backends"],
    "data": ["mlp.model", "mlp.optimisers", "mlp.data", "mlp.store", "mlp.checkpoint", "mlp.checkpoint_meta",
             "mlp.images"],
    "ground": ["mlp.errors", "mlp.files", "mlp.outputs", "mlp.idx", "mlp.npz", "mlp.batches", "mlp.versions"],
}
LEVEL = {name: len(FLOORS) - i for i, names in enumerate(FLOORS.values()) for name in names}


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for folder, package in PLACES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def floor(module: str) -> int | None:
    while module and module not in LEVEL:
        module = module.rpartition(".")[0]
    return LEVEL.get(module)


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project's modules it imports (a package's own __init__ never counts)."""
    alias = dict(zip(mods, mods))
    alias.update({m.removeprefix("mlp."): m for m in mods if m.startswith(("mlp.backends", "mlp.bench"))})

    def resolve(name: str) -> str | None:
        while name and name not in alias:
            name = name.rpartition(".")[0]
        return alias.get(name)

    edges = {}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = (base + "." + node.module if node.module else base) if node.level else node.module
                targets += [f"{source}.{a.name}" if f"{source}.{a.name}" in alias else source for a in node.names]
        edges[m] = {r for r in map(resolve, targets) if r and r != m and not m.startswith(r + ".") and r != "mlp"}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of more than one module that reach each other through their imports."""
    reach = {}
    for v in edges:
        reach[v], todo = set(), [v]
        while todo:
            new = edges[todo.pop()] - reach[v]
            reach[v] |= new
            todo += new
    groups = {tuple(sorted({v} | {w for w in reach[v] if v in reach[w]})) for v in edges}
    return sorted(list(g) for g in groups if len(g) > 1)


def main(root: str = ".") -> int:
    mods = modules(Path(root))
    edges = imports(mods)
    found = cycles(edges)
    for group in found:
        print("cycle: " + " <-> ".join(group))
    breaches = [(m, t) for m, ts in edges.items() for t in sorted(ts)
                if m != "mlp" and floor(m) is not None and floor(t) is not None and floor(t) > floor(m)]
    for m, t in breaches:
        print(f"floor: {m} imports {t}, which is on a floor above it")
    print(f"{len(mods)} modules, {sum(map(len, edges.values()))} import edges, {len(found)} cycles, "
          f"{len(breaches)} floor breaches")
    return 1 if found or breaches else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
