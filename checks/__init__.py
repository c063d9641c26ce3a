"""Checks against real outside systems, run by hand or in CI, not by pytest: `make ha-check`
(a real Home Assistant core) and `make image-check` (the image and compose stack on a real engine)."""
