"""Helpers shared by the test suite and the benchmarks: free ports, real etcd processes."""
