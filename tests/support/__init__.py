"""What the tests and the benchmarks share: the local control plane and KubeRay populations.

Neither ships in the wheel: both work only from a checkout of the repository.
"""
