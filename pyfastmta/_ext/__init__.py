"""Compiled modules built from ext/ (see setup.py)."""
