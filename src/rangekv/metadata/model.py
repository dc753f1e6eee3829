"""The metadata model moved to :mod:`rangekv.model`, below both the meta process (this package)
and the controller's planners; this older name stays for the code that still imports it."""

from rangekv.model import *  # noqa: F403  (every public name, as before)
from rangekv.model import _loads_compact  # noqa: F401  (tests/unit/test_rangemap.py reads it)
