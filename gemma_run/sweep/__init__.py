"""Multirun (sweep) support: the summary written at the end of a sweep."""
