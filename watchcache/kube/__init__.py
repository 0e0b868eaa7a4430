"""Kubernetes wire rules, pure: no I/O, nothing of watchcache outside this package."""
