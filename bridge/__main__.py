"""`python -m bridge` is the `capture-bridge` command."""

from bridge.cli import main

main()
