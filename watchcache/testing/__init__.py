"""Helpers shared by the tests and the benchmarks: realistic KubeRay populations."""
