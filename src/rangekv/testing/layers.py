"""Import contracts: which part of rangekv may import which (issue 17).

The contracts are declared, each with its reason, in ``pyproject.toml``'s
``[tool.rangekv.layers]`` table; this module reads the source with :mod:`ast` (nothing of the
package is imported or run) and reports every import that breaks one. CI runs it through
``tests/unit/test_layers.py``; by hand::

    python -m rangekv.testing.layers          # every broken contract, one import a line; exit 1
    python -m rangekv.testing.layers --graph  # the imports between rangekv's top-level parts

What counts as an import
------------------------
Every ``import`` and ``from ... import`` statement of a module, wherever it stands:

* at the top, and **inside functions**: a lazy import is a dependency all the same, only a
  later one;
* **inside** ``if TYPE_CHECKING:``: these count too. A type from another layer in a signature
  ties the code to that layer as much as a call does (mypy reads it, the code is written
  against it), and a cycle kept alive only by such an import is still a cycle of the design.

Relative imports are resolved against the module's package. ``from P import name`` is an import
of ``P.name`` when that is a module of the tree, else of ``P`` (the name recorded with it).
Not seen: imports by a name computed at run time (``importlib.import_module``): rangekv's one
use is the CLI's table of entry points (``PROCESS_COMMANDS`` in ``cli/main.py``), which
dispatches to the commands rather than depending on them.

Contracts
---------
A name in a contract stands for that module and every module inside it (``rangekv`` for the
whole package); ``module:name`` stands for ``from module import name`` alone (the client reads
``rangekv.__version__`` that way without being allowed the rest of the package).

``forbidden``  no module of ``modules`` (but those of ``exempt``) imports one of ``forbidden``.
``only``       the modules of ``modules`` import only each other and ``allowed``; the allowed
               pieces are held to the same list, so nothing comes in through them.
``acyclic``    no cycle of imports between the top-level parts of ``modules`` (each child
               package or module of it is one part; its ``__init__`` is none). Each cycle is
               reported with the import lines that make it.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("forbidden", "only", "acyclic")
CYCLES_MAX = 200  # cycles reported at most
LINES_PER_EDGE_MAX = 3  # import lines shown for one arrow of a cycle


@dataclass(frozen=True)
class Import:
    """One import of one module: ``importer`` (its file ``path``, ``line``) imports
    ``target``; ``names`` are the names taken from it when they are no modules
    (``from rangekv import __version__``: target ``rangekv``, names ``("__version__",)``)."""

    importer: str
    path: Path
    line: int
    target: str
    names: tuple[str, ...]
    text: str  # the statement, on one line
    type_checking: bool  # under ``if TYPE_CHECKING:``
    in_function: bool

    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def describe(self) -> str:
        how = [w for w, on in (("in a function", self.in_function),
                               ("under TYPE_CHECKING", self.type_checking)) if on]
        return f"{self.where()}: {self.text}" + (f"  ({', '.join(how)})" if how else "")


@dataclass(frozen=True)
class Contract:
    name: str
    kind: str
    why: str
    modules: tuple[str, ...]
    exempt: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Violation:
    """An import that breaks a ``forbidden`` or ``only`` contract."""

    contract: Contract
    imp: Import

    @property
    def key(self) -> tuple[str, str, str]:
        """What a known violation is written as: (contract, importer, target); no line, which
        moves with every edit above it."""
        return (self.contract.name, self.imp.importer, self.imp.target)

    def __str__(self) -> str:
        i = self.imp
        what = i.target + (f" ({', '.join(i.names)})" if i.names else "")
        return (f"{i.describe()}\n    {i.importer} imports {what}: breaks contract "
                f"{self.contract.name!r}")


@dataclass(frozen=True)
class Cycle:
    """Parts that import each other in a ring: ``parts[0]`` imports ``parts[1]``, ..., the
    last imports ``parts[0]``; ``edges[k]`` are the imports that make arrow k."""

    contract: Contract
    parts: tuple[str, ...]
    edges: tuple[tuple[Import, ...], ...]

    @property
    def key(self) -> tuple[str, ...]:
        """What a known cycle is written as: its parts, short, in ring order from the least."""
        return tuple(_short(p, self.contract) for p in self.parts)

    def __str__(self) -> str:
        ring = " -> ".join([*self.key, self.key[0]])
        out = [f"cycle {ring}: breaks contract {self.contract.name!r}"]
        for k, imps in enumerate(self.edges):
            a, b = self.key[k], self.key[(k + 1) % len(self.key)]
            out.append(f"  {a} -> {b}:")
            out += [f"    {i.describe()}" for i in imps[:LINES_PER_EDGE_MAX]]
            if len(imps) > LINES_PER_EDGE_MAX:
                out.append(f"    ... and {len(imps) - LINES_PER_EDGE_MAX} more")
        return "\n".join(out)


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)
    cycles_cut: bool = False  # more than CYCLES_MAX: the rest are not listed

    @property
    def ok(self) -> bool:
        return not self.violations and not self.cycles

    def __str__(self) -> str:
        parts = [str(v) for v in self.violations] + [str(c) for c in self.cycles]
        if self.cycles_cut:
            parts.append(f"(more cycles; the first {CYCLES_MAX} are listed)")
        broken = {v.contract.name: v.contract for v in self.violations}
        broken |= {c.contract.name: c.contract for c in self.cycles}
        parts += ["", "why these contracts hold (pyproject.toml [tool.rangekv.layers]):"]
        parts += [f"  {c.name}: {c.why}" for c in broken.values()]
        return "\n".join(parts)


# --- reading the tree ---------------------------------------------------------------------------


def modules_of(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``src``: dotted name -> file (a package by its
    ``__init__.py``)."""
    root = src / package.replace(".", "/")
    assert root.is_dir(), f"no package {package} under {src}"
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def collect(src: Path, package: str) -> list[Import]:
    """Every import of every module of ``package`` (see the module docstring) into the
    package itself; imports of anything else (the standard library, dependencies) are left
    out."""
    mods = modules_of(src, package)
    out: list[Import] = []
    for name, path in mods.items():
        out += _imports_of(name, path, path.name == "__init__.py", mods, src, package)
    return out


def _imports_of(module: str, path: Path, is_package: bool, mods: dict[str, Path], src: Path,
                package: str) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    shown = path.relative_to(src.parent) if src.parent in path.parents else path
    out: list[Import] = []

    def inside(target: str) -> bool:
        return target == package or target.startswith(package + ".")

    def visit(node: ast.AST, type_checking: bool, in_function: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            end = node.end_lineno or node.lineno
            stmt = " ".join(" ".join(lines[node.lineno - 1:end]).split())
            targets: dict[str, list[str]] = {}
            for target, name in _targets(node, module, is_package, mods):
                targets.setdefault(target, []).extend([name] if name else [])
            for target, names in targets.items():
                if inside(target):
                    out.append(Import(module, shown, node.lineno, target, tuple(names), stmt,
                                      type_checking, in_function))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, in_function)
            for child in node.orelse:
                visit(child, type_checking, in_function)
            return
        func = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking, in_function or func)

    visit(tree, False, False)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             mods: dict[str, Path]) -> Iterable[tuple[str, str | None]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
        return
    if node.level:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        assert base, f"{module}: a relative import beyond the top package"
        origin = f"{base}.{node.module}" if node.module else base
    else:
        assert node.module is not None
        origin = node.module
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        if sub in mods:
            yield sub, None
        else:
            yield origin, (None if alias.name == "*" else alias.name)


# --- the contracts ------------------------------------------------------------------------------


def load_contracts(pyproject: Path) -> tuple[str, list[Contract]]:
    """The package and the contracts of ``[tool.rangekv.layers]`` in ``pyproject``."""
    with open(pyproject, "rb") as f:
        table = tomllib.load(f)["tool"]["rangekv"]["layers"]
    contracts = []
    for c in table["contract"]:
        unknown = set(c) - {"name", "kind", "why", "modules", "exempt", "forbidden", "allowed"}
        if unknown or c.get("kind") not in KINDS or not c.get("why"):
            raise ValueError(f"{pyproject}: contract {c.get('name')!r}: needs name, kind (one "
                             f"of {', '.join(KINDS)}) and why; unknown keys {sorted(unknown)}")
        contracts.append(Contract(
            c["name"], c["kind"], " ".join(c["why"].split()), tuple(c["modules"]),
            tuple(c.get("exempt", ())), tuple(c.get("forbidden", ())),
            tuple(c.get("allowed", ()))))
    names = [c.name for c in contracts]
    assert len(set(names)) == len(names), f"{pyproject}: two contracts with one name"
    return table["package"], contracts


def _matches(pattern: str, imp: Import) -> bool:
    """Does ``pattern`` (a module, or ``module:name``) cover the import ``imp``?"""
    mod, _, only = pattern.partition(":")
    if only:
        return imp.target == mod and imp.names == (only,)
    return imp.target == mod or imp.target.startswith(mod + ".")


def _covers(patterns: Sequence[str], module: str) -> bool:
    """Is ``module`` one of ``patterns``' modules (``module:name``: that module alone)?"""
    for p in patterns:
        mod, _, only = p.partition(":")
        if module == mod or (not only and module.startswith(mod + ".")):
            return True
    return False


def check(imports: Sequence[Import], contracts: Sequence[Contract]) -> Report:
    report = Report()
    for c in contracts:
        if c.kind == "forbidden":
            for i in imports:
                if (_covers(c.modules, i.importer) and not _covers(c.exempt, i.importer)
                        and any(_matches(p, i) for p in c.forbidden)):
                    report.violations.append(Violation(c, i))
        elif c.kind == "only":
            ring = (*c.modules, *c.allowed)
            for i in imports:
                if (_covers(ring, i.importer) and not _covers(c.exempt, i.importer)
                        and not any(_matches(p, i) for p in ring)):
                    report.violations.append(Violation(c, i))
        else:
            cycles, cut = _cycles(imports, c)
            report.cycles += cycles
            report.cycles_cut |= cut
    return report


def part_of(module: str, roots: Sequence[str]) -> str | None:
    """The top-level part of ``module``: ``rangekv.storage.wal`` -> ``rangekv.storage``
    (None for a root's own ``__init__`` or a module outside them)."""
    for root in roots:
        if module.startswith(root + "."):
            return root + "." + module[len(root) + 1:].split(".")[0]
    return None


def graph(imports: Sequence[Import], roots: Sequence[str], exempt: Sequence[str] = ()
          ) -> dict[str, dict[str, list[Import]]]:
    """Part -> part -> the imports that make that arrow (between two parts only)."""
    g: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for i in imports:
        a, b = part_of(i.importer, roots), part_of(i.target, roots)
        if a and b and a != b and not _covers(exempt, a) and not _covers(exempt, b):
            g[a][b].append(i)
    return g


def _cycles(imports: Sequence[Import], c: Contract) -> tuple[list[Cycle], bool]:
    """The cycles between parts, as each arrow that closes one sees it: for every arrow
    A -> B inside a strongly connected set of parts, the shortest way back B -> ... -> A.
    Every part and arrow of every cycle is in one of them, and there are at most as many as
    arrows (listing every elementary cycle instead gives thousands of long rings that say
    nothing more). Shortest first, at most CYCLES_MAX."""
    g = graph(imports, c.modules, c.exempt)
    rings: set[tuple[str, ...]] = set()
    for a in sorted(g):
        for b in sorted(g[a]):
            back = _shortest_path(g, b, a)
            if back is not None:
                ring = (a, *back[:-1])
                k = ring.index(min(ring))
                rings.add(ring[k:] + ring[:k])
    found = sorted(rings, key=lambda ring: (len(ring), ring))
    cut = len(found) > CYCLES_MAX
    cycles = [Cycle(c, ring, tuple(tuple(g[a][ring[(k + 1) % len(ring)]])
                                   for k, a in enumerate(ring))) for ring in found[:CYCLES_MAX]]
    return cycles, cut


def _shortest_path(g: dict[str, dict[str, list[Import]]], src: str, dst: str
                   ) -> list[str] | None:
    """The parts from ``src`` to ``dst`` (both included) on a shortest way, or None
    (breadth first; neighbours in name order, so the answer is the same every time)."""
    came: dict[str, str | None] = {src: None}
    frontier = [src]
    while frontier and dst not in came:
        nxt = []
        for a in frontier:
            for b in sorted(g.get(a, {})):
                if b not in came:
                    came[b] = a
                    nxt.append(b)
        frontier = nxt
    if dst not in came:
        return None
    path = [dst]
    while (prev := came[path[-1]]) is not None:
        path.append(prev)
    return path[::-1]


def _short(part: str, c: Contract) -> str:
    for root in c.modules:
        if part.startswith(root + "."):
            return part[len(root) + 1:]
    return part


# --- the command --------------------------------------------------------------------------------


def run(root: Path) -> tuple[list[Contract], Report, list[Import]]:
    """Check the checkout at ``root`` (``src/`` and ``pyproject.toml``)."""
    package, contracts = load_contracts(root / "pyproject.toml")
    imports = collect(root / "src", package)
    return contracts, check(imports, contracts), imports


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rangekv.testing.layers",
                                description="Check rangekv's import contracts "
                                "(pyproject.toml [tool.rangekv.layers]).")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[3],
                   help="the checkout (default: the one this module is in)")
    p.add_argument("--graph", action="store_true",
                   help="print the imports between the top-level parts instead")
    args = p.parse_args(argv)
    contracts, report, imports = run(args.root)
    if args.graph:
        package, _ = load_contracts(args.root / "pyproject.toml")
        g = graph(imports, [package])
        for a in sorted(g):
            print(f"{a[len(package) + 1:]} -> " + ", ".join(
                f"{b[len(package) + 1:]} ({len(g[a][b])})" for b in sorted(g[a])))
        return 0
    if report.ok:
        print(f"{len(contracts)} import contracts kept ({len(imports)} imports read)")
        return 0
    print(report)
    print(f"\n{len(report.violations)} import(s) and {len(report.cycles)} cycle(s) break the "
          "contracts of pyproject.toml [tool.rangekv.layers]", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
