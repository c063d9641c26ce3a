"""The Home Assistant add-on's entry point: Supervisor options and MQTT service -> the bridge's Config.

`python -m bridge.addon` is what the add-on image runs (the add-on files are at the repository
root: config.yaml, Dockerfile, DOCS.md). It is an entry point like `bridge/cli.py`: it reads
`/data/options.json`, asks the Supervisor for the broker, builds the same Config that
`capture-bridge run` would load, and runs it.
"""
