"""Helpers shared by the test folders; fixtures stay in ``tests/conftest.py``."""
