"""TEMPORARY: `python -m kestrel.cli` for kestrel/services.py and tests/stream/*, which still
launch the command line by this name; removed at integration (the command line is
cli/main.py: `python -m cli`, or the `kestrel` console script)."""

# TEMPORARY re-export for kestrel/services.py, tests/stream/*; removed at integration
from cli.main import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
