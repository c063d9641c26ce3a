"""The one TLS context builder, for the broker (mqtts://) and the cloud (https://).

Every problem with a file is a ConfigError that names the key to fix (one line, exit 2).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.config import CloudConfig, MqttConfig
from bridge.core.errors import ConfigError


def _why(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def client_context(
    section: str,
    *,
    ca_file: Path | None,
    verify: bool = True,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """System CAs or `ca_file`, an optional client certificate; `verify=False` switches checks off.

    `section` (`mqtt`, `cloud`) prefixes the key named in errors.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise ConfigError(f"{section}.ca_file: no such file: {ca_file}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}.ca_file: cannot use {ca_file} as a CA bundle: {_why(exc)}") from None
    if cert_file is not None:
        for key, path in ((f"{section}.cert_file", cert_file), (f"{section}.key_file", key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{key}: no such file: {path}")
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{section}.cert_file / {section}.key_file: cannot load {cert_file}: "
                              f"{_why(exc)}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def mqtt_context(config: MqttConfig) -> ssl.SSLContext:
    """TLS for mqtts://: system CAs or `ca_file`, optional client certificate, `tls_insecure` to skip checks."""
    return client_context("mqtt", ca_file=config.ca_file, verify=not config.tls_insecure,
                          cert_file=config.cert_file, key_file=config.key_file)


def cloud_context(config: CloudConfig) -> ssl.SSLContext | None:
    """Verified HTTPS by default, with an optional CA bundle; `verify_tls: false` to switch checks off."""
    if not config.base_url.startswith("https"):
        return None
    return client_context("cloud", ca_file=config.ca_file, verify=config.verify_tls)
