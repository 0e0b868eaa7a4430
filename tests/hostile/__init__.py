"""Hostile-input tests (issue 11). A package, so that its conftest does not shadow the
shared tests/conftest.py for modules that import from it."""
