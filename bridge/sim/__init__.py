"""The mock cloud: the API logic (simulator.py) and its HTTP server (server.py)."""
