"""Kestrel's Feast definitions.

A package rather than loose modules so that Feast's import of every file (by a top-level
module name derived from its path) cannot collide with an unrelated installed module, and the
files can import each other by a name that is unambiguous.
"""
