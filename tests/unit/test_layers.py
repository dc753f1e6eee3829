"""The import contracts (pyproject.toml [tool.rangekv.layers]) hold for rangekv, and the checker
that reads them (rangekv.testing.layers) finds what breaks them in a small made-up package.

Known violations are listed below, each with who is removing it. The list is strict both ways:
a violation not on it fails the test, and so does an entry that no longer happens (remove it
then, in the commit that fixes it), so the list can only shrink to nothing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rangekv.testing import layers

ROOT = Path(__file__).resolve().parents[2]

# (contract, importing module, imported module) -> who removes it: imports known to break a
# contract while work to remove them is under way. Empty: every contract holds. An entry added
# here must say who removes it; the test fails once the import is gone, so the list only shrinks.
KNOWN_VIOLATIONS: dict[tuple[str, str, str], str] = {}

# cycles between top-level parts, as the checker names them (ring order from the least) -> who.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def test_rangekv_keeps_its_import_contracts() -> None:
    contracts, report, imports = layers.run(ROOT)
    assert len(imports) > 300, "the checker read too few imports: is src/ where it looks?"
    assert {c.kind for c in contracts} == set(layers.KINDS)
    assert not report.cycles_cut
    found_v = {v.key: v for v in report.violations}
    found_c = {c.key: c for c in report.cycles}
    new = [str(v) for k, v in found_v.items() if k not in KNOWN_VIOLATIONS]
    new += [str(c) for k, c in found_c.items() if k not in KNOWN_CYCLES]
    gone = [f"{k}: {who}" for k, who in KNOWN_VIOLATIONS.items() if k not in found_v]
    gone += [f"{k}: {who}" for k, who in KNOWN_CYCLES.items() if k not in found_c]
    assert not new, ("imports that break the contracts of pyproject.toml "
                     "[tool.rangekv.layers]:\n" + "\n".join(new))
    assert not gone, ("fixed, well done: remove these from KNOWN_VIOLATIONS / KNOWN_CYCLES in "
                      "tests/unit/test_layers.py:\n" + "\n".join(gone))


# --- the checker on a made-up package -----------------------------------------------------------

PYPROJECT = """
[tool.rangekv.layers]
package = "pkg"

[[tool.rangekv.layers.contract]]
name = "low-below-high"
kind = "forbidden"
modules = ["pkg.low"]
forbidden = ["pkg.high"]
why = "low is below high"

[[tool.rangekv.layers.contract]]
name = "prod-not-tests"
kind = "forbidden"
modules = ["pkg"]
exempt = ["pkg.testing"]
forbidden = ["pkg.testing"]
why = "tests are not shipped"

[[tool.rangekv.layers.contract]]
name = "client-small"
kind = "only"
modules = ["pkg.client"]
allowed = ["pkg.errors", "pkg:__version__"]
why = "the client is small"

[[tool.rangekv.layers.contract]]
name = "no-cycles"
kind = "acyclic"
modules = ["pkg"]
why = "layers"
"""

CLEAN = {
    "__init__.py": "__version__ = '1'\nfrom pkg import errors\n",
    "errors.py": "class Error(Exception): pass\n",
    "low/__init__.py": "",
    "low/disk.py": "from ..errors import Error\nfrom . import util\n",
    "low/util.py": "import os\n",
    "high/__init__.py": "from pkg.low import disk\n",
    "high/server.py": "from pkg.low.disk import Error\nimport pkg.errors\n",
    "client/__init__.py": "from pkg import __version__\nfrom pkg.client import _impl\n",
    "client/_impl.py": "from .. import errors\nimport httpx\n",
    "testing/__init__.py": "from pkg.high import server\n",
}


def make(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for name, text in files.items():
        path = tmp_path / "src" / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_clean_package_passes(tmp_path: Path) -> None:
    contracts, report, imports = layers.run(make(tmp_path, CLEAN))
    assert report.ok, str(report)
    assert len(contracts) == 4
    # relative imports resolved; stdlib and third-party left out; "from P import module"
    # is an import of the module
    assert {(i.importer, i.target) for i in imports} >= {
        ("pkg.low.disk", "pkg.errors"), ("pkg.low.disk", "pkg.low.util"),
        ("pkg.client._impl", "pkg.errors"), ("pkg.client", "pkg.client._impl"),
        ("pkg.high.server", "pkg.errors"), ("pkg.high.server", "pkg.low.disk")}
    assert not any(i.target in ("os", "httpx") for i in imports)
    assert layers.main(["--root", str(tmp_path)]) == 0


def test_violations_name_file_line_and_import(tmp_path: Path) -> None:
    bad = dict(CLEAN)
    bad["low/disk.py"] = """\
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pkg.high.server import Server
        def lazy():
            from ..testing import helper
        """
    bad["client/_impl.py"] = "from pkg import __version__, high\nfrom pkg.low import util\n"
    bad["testing/helper.py"] = ""
    _, report, _ = layers.run(make(tmp_path, bad))
    text = str(report)
    got = {(v.contract.name, v.imp.importer, v.imp.target, v.imp.line) for v in report.violations}
    assert got == {
        ("low-below-high", "pkg.low.disk", "pkg.high.server", 4),  # under TYPE_CHECKING: counts
        ("prod-not-tests", "pkg.low.disk", "pkg.testing.helper", 6),  # in a function: counts
        ("client-small", "pkg.client._impl", "pkg.high", 1),  # __version__ alone is allowed
        ("client-small", "pkg.client._impl", "pkg.low.util", 2),
    }
    assert "src/pkg/low/disk.py:4: from pkg.high.server import Server  (under TYPE_CHECKING)" in text
    assert "src/pkg/low/disk.py:6: from ..testing import helper  (in a function)" in text
    assert "pkg.low.disk imports pkg.testing.helper: breaks contract 'prod-not-tests'" in text
    assert "low-below-high: low is below high" in text  # the reason, once
    # the low -> high and low -> testing imports also close cycles (each reported once)
    assert [c.key for c in report.cycles] == [("high", "low"), ("high", "low", "testing")]


def test_cycles_are_reported_with_the_imports_that_make_them(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["a.py"] = "from pkg import b\n"
    files["b.py"] = "import os\n\ndef f():\n    from pkg.c import x\n"
    files["c.py"] = "from pkg.a import y\nx = 1\n"
    files["d.py"] = "import pkg.errors\nimport pkg.d2\n"
    files["d2.py"] = "from . import d\n"
    _, report, _ = layers.run(make(tmp_path, files))
    assert not report.violations
    assert [c.key for c in report.cycles] == [("d", "d2"), ("a", "b", "c")]
    text = str(report)
    assert "cycle a -> b -> c -> a: breaks contract 'no-cycles'" in text
    assert "  b -> c:\n    src/pkg/b.py:4: from pkg.c import x  (in a function)" in text
    assert "  c -> a:\n    src/pkg/c.py:1: from pkg.a import y" in text
    assert layers.main(["--root", str(tmp_path)]) == 1


def test_a_contract_must_say_why(tmp_path: Path) -> None:
    make(tmp_path, CLEAN)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(PYPROJECT.replace('why = "layers"\n', ""))
    with pytest.raises(ValueError, match="needs name, kind"):
        layers.load_contracts(pyproject)
