"""Shared feeds of a publication in other forms: re-framed or transcoded (pipeline.py)."""
