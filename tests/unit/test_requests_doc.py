"""docs/internals.md lists every internal request as the servers declare it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rangekv import requests_doc
from rangekv.metadata.requests import OPS as META_OPS
from rangekv.node.requests import OPS as NODE_OPS

DOC = Path(__file__).resolve().parents[2] / "docs" / "internals.md"


def test_the_table_in_internals_md_is_the_declarations() -> None:
    text = DOC.read_text()
    if requests_doc.rewrite(text) != text:
        pytest.fail(f"docs/internals.md's requests table is out of date; regenerate it with\n"
                    f"    {requests_doc.REGENERATE}")


def test_every_request_type_has_a_row_and_every_field_a_bad_example() -> None:
    table = requests_doc.render()
    for op in [*NODE_OPS.values(), *META_OPS.values()]:
        assert f"| `{op.name}` |" in table, op.name
        for name, f in op.fields.items():
            assert f.bad, f"{op.name}.{name} has no bad example: nothing would test it"
