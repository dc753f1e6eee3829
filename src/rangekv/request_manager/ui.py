"""The dashboard's static files (``ui/``: HTML, CSS, JavaScript), served by the rm at ``/ui/``.

The page is plain HTML with vanilla JavaScript and no build step and nothing from elsewhere: it
polls ``GET /v1/cluster/status`` (``live.py``) every couple of seconds and redraws. The files
ship inside the package (``package-data`` in pyproject.toml) and are read once, when the rm
starts; only the names found there are served, so a path can never reach another file.

Every answer carries a strict Content-Security-Policy (scripts, styles and fetches from this
origin only, no inline script), ``nosniff`` and ``no-cache`` (the browser revalidates, so a
new rm's page is picked up at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class File:
    body: bytes
    content_type: str


def load() -> dict[str, File]:
    """Every file of ``ui/`` with a known type, by name."""
    out: dict[str, File] = {}
    folder = resources.files("rangekv.request_manager").joinpath("ui")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[entry.name] = File(entry.read_bytes(), CONTENT_TYPES[suffix])
    return out
