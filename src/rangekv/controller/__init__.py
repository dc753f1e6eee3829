"""The controller: the active meta's decisions, as pure planners (docs/architecture.md, "The
control plane"). Nothing here waits, reads a clock or touches a network or etcd; time is passed
in, and every decision is returned as data (``decisions.py``) for a driver to perform: the meta
against etcd and the nodes (``rangekv.metadata.perform``), a simulator against etcd in memory
(``rangekv.metadata.memory``) in simulated time.

* ``planner.py``: the control loop's decisions, ``Planner.tick(now_ms, seen)``;
* ``health.py``: what a heartbeat says (live, a spare, a serving leader);
* ``leader.py``: choosing a group's leader;
* ``replace.py``: replacing a failing follower by a spare, forming groups;
* ``lag.py``: lag that stops shrinking;
* ``split.py``: when and where to split or merge a range;
* ``move.py``: the steps of moving a range between groups;
* ``placement.py``: where a new table goes;
* ``nodes.py``: what a heartbeat does to a node's record, and when a record may go.

It depends on the model (``rangekv.model``) and the error tree only; the meta depends on it.
"""
