"""``rangekv bench calibrate`` on short measurements: every figure is measured (positive, with
its sample count), the floor is computed from them, and the CLI prints the table and JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rangekv.bench.calibrate import calibrate, measure_fsync
from rangekv.bench.main import Progress, main


def test_fsync_measures_syncs_and_cleans_up(tmp_path: Path) -> None:
    one = measure_fsync(tmp_path, 1, 0.2)
    batched = measure_fsync(tmp_path, 1, 0.2, batch=8)
    assert one.n > 0 and one.per_s > 0 and 0 < one.p50_ms <= one.p99_ms
    assert batched.n > 0 and batched.per_s > 0
    assert not list(tmp_path.iterdir())  # its files are removed


def test_calibrate_measures_everything_and_derives_the_floor(tmp_path: Path) -> None:
    steps: list[str] = []
    result = calibrate(tmp_path, seconds=0.2, batch=4, connections=4, progress=steps.append)
    assert len(steps) == 5
    for rate in (result.fsync_1, result.fsync_3, result.group_commit, result.loopback_rtt,
                 result.echo_ceiling):
        assert rate.n > 0 and rate.per_s > 0 and rate.p50_ms > 0
    assert result.floor_put_ms == 3 * result.loopback_rtt.p50_ms + result.fsync_1.p50_ms
    assert "floor of one replicated write" in result.table()


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cal.json"
    code = main(["calibrate", "--seconds", "0.1", "--connections", "2", "--dir", str(tmp_path),
                 "--json", str(out)])
    assert code == 0
    assert "fsync, 1 writer" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["fsync_1"]["n"] > 0 and data["floor_put_ms"] > 0
    assert main(["calibrate", "--seconds", "0"]) == 2


def test_progress_bar_counts_steps() -> None:
    stream = io.StringIO()
    bar = Progress(2, stream, width=4, live=True)
    bar.step("a")
    bar.step("b")
    bar.close()
    text = stream.getvalue()
    assert "[----] 0/2 a" in text and "[##--] 1/2 b" in text and "2/2 done" in text


def test_progress_off_a_terminal_writes_lines_not_redraws() -> None:
    stream = io.StringIO()  # not a terminal: what a pipe, a log file or cron gets
    bar = Progress(3, stream, width=4)
    assert not bar.live
    bar.step("copying")
    for done in range(1, 1000):
        bar.update(done, "copying")  # no redraws into the log
    bar.close("3 files")
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == ["[----] 0/3 copying", "[####] 3/3 3 files"]
