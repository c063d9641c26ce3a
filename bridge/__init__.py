"""capture-bridge: MQTT capture commands -> vendor cloud ActiveNewPhotograph -> MQTT state."""

__version__ = "0.1.0"
