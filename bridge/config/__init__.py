"""Configuration: one pydantic model per section (models.py), loaded from YAML + environment (loader.py).

Every key may be overridden by `CAPTURE_BRIDGE_<SECTION>__<KEY>` (nested keys join with
further `__`); values are read as YAML scalars, so `null`, `true` and `5` mean what they say.
Unknown keys anywhere are an error.
"""

from bridge.config.loader import ENV_PREFIX, load_config
from bridge.config.models import (
    BridgeConfig,
    CloudConfig,
    Config,
    DeviceEntry,
    HomeAssistantConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
)

__all__ = [
    "ENV_PREFIX",
    "BridgeConfig",
    "CloudConfig",
    "Config",
    "DeviceEntry",
    "HomeAssistantConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "load_config",
]
