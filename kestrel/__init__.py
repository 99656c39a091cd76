"""Kestrel: a real-time feature platform for card-fraud decisions and customer insights."""

__version__ = "0.1.0"
