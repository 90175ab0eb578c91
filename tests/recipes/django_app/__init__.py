"""A tiny Django app for the Django recipe (tests/recipes/test_django.py, docs/ORMS.md)."""
