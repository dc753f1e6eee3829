"""The routing map moved to :mod:`rangekv.model.rangemap`; this older name stays for the code
that still imports it."""

from rangekv.model.rangemap import *  # noqa: F403  (every public name, as before)
