"""Plain HTTP from the tests' side: the bridge's /healthz and /metrics, read with the standard library."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def http_answer(url: str, timeout: float = 15.0) -> tuple[int, str]:
    """The first answer of a server that may still be starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # ok: polling a port with a deadline


def metric_value(text: str, sample_name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
