"""`python -m cli`: the `kestrel` command line."""

from cli.main import main

main()
