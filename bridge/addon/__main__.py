"""`python -m bridge.addon`: the add-on image's entry point."""

from bridge.addon.main import main

main()
