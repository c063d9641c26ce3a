"""The MQTT adapter: the only package of the service that imports paho."""
