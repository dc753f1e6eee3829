"""The storage node process (``rangekv node``)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from rangekv.node.server import main as node_main

    return node_main(argv)
