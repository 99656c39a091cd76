"""Benchmarks: `kestrel bench <scenario> [--quick] [--out PATH]` against real services."""
