"""Training assets (filled in with the training package)."""

ASSETS: list = []
CHECKS: list = []
