"""Deterministic simulation of the replication core, its storage and meta's decisions."""
