"""The broker the Supervisor advertises: `GET http://supervisor/services/mqtt` with the add-on's token."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.core.errors import ConfigError

SUPERVISOR_URL = "http://supervisor"
# What to do when the Supervisor has no MQTT service: the one fix almost every user needs.
NO_BROKER = ("no MQTT broker: the Supervisor offers no MQTT service ({why}); install and start the "
             "Mosquitto broker add-on, then start this add-on again")

OUTSIDE_ADDON = ("SUPERVISOR_TOKEN is not set: this entry point runs inside a Home Assistant add-on "
            "(for a plain install use `capture-bridge run --config ...`)")


@dataclass(frozen=True)
class Broker:
    """The MQTT service as the Supervisor describes it (supervisor/services/modules/mqtt.py)."""

    host: str
    port: int
    ssl: bool
    username: str | None
    password: str | None

    @property
    def url(self) -> str:
        """`mqtt://host:port`, or `mqtts://` when the service says `ssl`."""
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"{'mqtts' if self.ssl else 'mqtt'}://{host}:{self.port}"


def parse_service(body: object) -> Broker:
    """The `data` of a 200 answer; ConfigError naming the field that does not make sense."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ConfigError("the Supervisor's MQTT service answered without data")
    host, port, ssl = data.get("host"), data.get("port"), data.get("ssl", False)
    if not isinstance(host, str) or not host:
        raise ConfigError("the Supervisor's MQTT service has no host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"the Supervisor's MQTT service has a bad port: {port!r}")
    if not isinstance(ssl, bool):
        raise ConfigError(f"the Supervisor's MQTT service has a bad ssl flag: {ssl!r}")
    # `protocol` is always 3.1 or 3.1.1 there; the bridge keeps mqtt.protocol `auto` (5, else 3.1.1).
    return Broker(host, port, ssl, _text(data.get("username")), _text(data.get("password")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _refusal(status: int, body: object) -> ConfigError:
    why = body.get("message") if isinstance(body, dict) else None
    why = str(why) if why else f"HTTP {status}"
    if status == 400:
        return ConfigError(NO_BROKER.format(why=why))
    if status in (401, 403):
        return ConfigError(f"the Supervisor refused the MQTT service ({why}): the add-on's config.yaml "
                           "must list `services: [mqtt:need]`; reinstall the add-on")
    return ConfigError(f"the Supervisor answered the MQTT service request with {why}")


# Seconds for the whole request: the Supervisor answers from memory.
ANSWER_WITHIN = 10.0


async def fetch_broker(base_url: str, token: str | None) -> Broker:
    """Ask the Supervisor for its MQTT service; ConfigError with one line saying what to fix."""
    if not token:
        raise ConfigError(OUTSIDE_ADDON)
    url = f"{base_url.rstrip('/')}/services/mqtt"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN)) as session, \
                session.get(url, headers=headers) as reply:
            try:
                body: Any = await reply.json(content_type=None)
            except ValueError:
                body = None
            if reply.status != 200:
                raise _refusal(reply.status, body)
            return parse_service(body)
    except aiohttp.ClientError as exc:
        raise ConfigError(f"cannot reach the Supervisor at {base_url} to find the MQTT broker: "
                          f"{_reason(exc)}") from None
    except TimeoutError:
        raise ConfigError(f"the Supervisor at {base_url} did not answer within {ANSWER_WITHIN:.0f} s") from None


def _reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return os.strerror(exc.os_error.errno)  # asyncio's own text is "Connect call failed (...)"
    return str(exc) or type(exc).__name__
