"""``rangekv chaos``: a Jepsen-style test of a real cluster (see :mod:`rangekv.chaos.main`)."""
