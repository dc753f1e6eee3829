"""HAProxy's part of the HTTP edge: its errorfiles are raw HTTP answers in the rms' JSON error
shape, the generated haproxy.cfg references every one of them, and its timeouts stand in the
documented relation to the rm's own limits (``haproxy_config``'s docstring)."""

from __future__ import annotations

import json
import shutil
import subprocess
from http import HTTPStatus
from pathlib import Path

import pytest

from rangekv import errors, http_server, limits
from rangekv.cluster import haproxy_errors, local
from rangekv.request_manager import routing

HAPROXY_BUFSIZE_BYTES = 16384  # HAProxy's default tune.bufsize: an errorfile must fit well within
HAVE_HAPROXY = bool(shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists())


def parse_errorfile(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no blank line (CRLF CRLF) after the headers"
    status_line, *lines = head.decode("ascii").split("\r\n")
    version, status, reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1" and reason == HTTPStatus(int(status)).phrase, status_line
    headers = {}
    for line in lines:
        name, colon, value = line.partition(": ")
        assert colon and name.lower() not in headers, line
        headers[name.lower()] = value
    return int(status), headers, body


@pytest.mark.parametrize("status", haproxy_errors.STATUSES)
def test_each_errorfile_is_a_raw_http_answer_in_the_rms_error_shape(status: int) -> None:
    raw = haproxy_errors.errorfile(status).read_bytes()
    assert len(raw) < HAPROXY_BUFSIZE_BYTES // 4
    got_status, headers, body = parse_errorfile(raw)
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close" and headers["cache-control"] == "no-store"
    assert ("retry-after" in headers) == (status in (503, 504))
    if "retry-after" in headers:
        assert headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "retryable", "answered_by"}
    assert error["answered_by"] == "haproxy" and "HAProxy" in error["message"]
    cls = type(errors.from_dict(error))
    assert cls.code == error["code"]  # a code of the tree (from_dict makes others internal)
    assert error["retryable"] == cls.retryable
    # the code's status, except 502: outcome_unknown (504) says what a 502 means for a write
    assert cls.status == status or (status, error["code"]) == (502, "outcome_unknown")


def test_the_config_references_every_errorfile_and_haproxy_takes_it(tmp_path: Path) -> None:
    text = local.haproxy_config(18400, [18411, 18412])
    for status in haproxy_errors.STATUSES:
        line = f"    errorfile {status} {haproxy_errors.errorfile(status)}"
        assert line in text.splitlines()
    # copies elsewhere, as a HAProxy on a machine of its own has them (a path with a space)
    copies = tmp_path / "haproxy errors"
    written = haproxy_errors.write(copies)
    assert [p.read_bytes() for p in written] == [
        haproxy_errors.errorfile(s).read_bytes() for s in haproxy_errors.STATUSES]
    moved = local.haproxy_config(18400, [18411], errorfiles_dir=copies)
    assert f'    errorfile 503 "{copies / "503.http"}"' in moved.splitlines()
    if not HAVE_HAPROXY:
        pytest.skip("HAProxy is not installed")
    for n, cfg_text in enumerate([text, moved]):
        cfg = tmp_path / f"haproxy-{n}.cfg"
        cfg.write_text(cfg_text)
        check = subprocess.run([local.haproxy_binary(), "-c", "-f", str(cfg)],
                               capture_output=True, timeout=30, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_haproxys_timeouts_against_the_rms() -> None:
    t = local.HaproxyTimeouts()
    # HAProxy forwards only whole heads: its head deadline is the rm's, a total like it
    assert t.http_request_s == limits.HTTP_HEAD_TIMEOUT_S
    # a trickled body gets the rm's 408 before HAProxy gives up on the rm; and a merely slow
    # rm (its longest deadlines) is never cut off by a 504
    assert t.server_s > limits.HTTP_BODY_TIMEOUT_S + routing.REQUEST_DEADLINE_S
    assert t.server_s > routing.META_DEADLINE_S
    assert t.client_s >= t.server_s
    # HAProxy closes idle connections before the rm would
    assert t.http_keep_alive_s < http_server.KEEPALIVE_S
    text = local.haproxy_config(8400, [8411])
    for line in ["timeout http-request 10s", "timeout server 30s", "timeout client 30s"]:
        assert f"    {line}" in text.splitlines()


def test_timeouts_can_be_lowered_for_tests_and_are_checked() -> None:
    t = local.HaproxyTimeouts(http_request_s=1.5, server_s=3, client_s=3)
    text = local.haproxy_config(8400, [8411], timeouts=t)
    assert "    timeout http-request 1500ms" in text.splitlines()
    assert "    timeout server 3s" in text.splitlines()
    with pytest.raises(ValueError, match="timeout client"):
        local.HaproxyTimeouts(client_s=5, server_s=10)
    with pytest.raises(ValueError, match="connect_s"):
        local.HaproxyTimeouts(connect_s=0)


def test_the_copy_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert haproxy_errors.main([str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "e" / f"{s}.http") for s in haproxy_errors.STATUSES]
