"""Features: plug-ins on one seam (base.py), registered in bootstrap.features."""
