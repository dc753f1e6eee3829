"""The meta's rolling metadata backups moved to :mod:`rangekv.metadata.backups`, with the meta
that runs them (so that the meta imports nothing of ``rangekv.backup``); this name stays for
the code that still imports it."""

from rangekv.metadata.backups import *  # noqa: F403  (every public name, as before)
