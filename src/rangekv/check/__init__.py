"""Linearizability checking of recorded histories (``rangekv check-history``).

:mod:`.parse` reads Jepsen logs, EDN-like and JSON-lines histories; :mod:`.models` holds the
sequential specifications (register, kv, rangekv); :mod:`.wgl` is the search;
:mod:`.main` is the command.
"""

from rangekv.check.models import MODELS
from rangekv.check.parse import BadHistory, Operation, read_history
from rangekv.check.wgl import ILLEGAL, OK, UNKNOWN, check, check_partition

__all__ = ["ILLEGAL", "MODELS", "OK", "UNKNOWN", "BadHistory", "Operation", "check",
           "check_partition", "read_history"]
