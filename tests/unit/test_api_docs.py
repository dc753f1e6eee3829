"""docs/api.md is what the generator renders from the OpenAPI document, byte for byte."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from rangekv.request_manager import apidoc, openapi

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_docs_api_md_matches_the_generator() -> None:
    expected = apidoc.render()
    current = API_MD.read_text(encoding="utf-8") if API_MD.exists() else ""
    if current != expected:
        diff = "".join(list(difflib.unified_diff(
            current.splitlines(keepends=True), expected.splitlines(keepends=True),
            "docs/api.md (committed)", "docs/api.md (generated)"))[:60])
        pytest.fail(f"docs/api.md is out of date; regenerate it with\n    {apidoc.REGENERATE}\n"
                    f"and commit it. First lines of the difference:\n{diff}")


def test_every_operation_and_error_code_is_on_the_page() -> None:
    text = apidoc.render()
    doc = openapi.document()
    for path, item in doc["paths"].items():
        for method in apidoc.METHODS:
            if method in item:
                assert f"### {method.upper()} {path}\n" in text
                assert f"`{item[method]['operationId']}`" in text
    for code, status, _ in apidoc.error_rows():
        assert f"| `{code}` | {status} |" in text


def test_an_operation_without_an_example_is_refused() -> None:
    doc = openapi.document()
    doc["paths"]["/v1/new"] = {"get": {"operationId": "brandNew", "responses": {}}}
    with pytest.raises(ValueError, match="no curl example for operation"):
        apidoc.render(doc)


def test_check_mode_reports_a_stale_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    assert apidoc.main(["--check", str(stale)]) == 1
    assert apidoc.REGENERATE in capsys.readouterr().err
    apidoc.main(["--out", str(stale)])
    assert apidoc.main(["--check", str(stale)]) == 0


def test_the_tour_script_runs_every_example_in_order() -> None:
    script = apidoc.tour_script()
    lines = [ln for ln in script.splitlines() if ln.startswith("echo ")]
    assert len(lines) == len(apidoc.EXAMPLES)
    assert [int(ln.split()[1]) for ln in lines] == list(range(len(apidoc.EXAMPLES)))
