"""Metrics (the service's Observer) and the /metrics + /healthz endpoint on a real local port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from bridge.infra.metrics import Health as HealthReport
from bridge.infra.metrics import Metrics, MetricsServer
from bridge.service.ports import Observer


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, f"no sample {name}{labels or ''}"
    return value


def get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body), for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def test_metrics_satisfies_the_observer_protocol() -> None:
    observer: Observer = Metrics()
    observer.load(0, 0)
    assert isinstance(observer, Metrics)


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.finished("ok", None, 0.1)
    assert sample(a, "capture_bridge_commands_total", {"status": "ok", "error": ""}) == 1
    assert sample(b, "capture_bridge_commands_total", {"status": "ok", "error": ""}) == 0


def test_an_injected_registry_is_used() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_connected(True)
    assert registry.get_sample_value("capture_bridge_mqtt_connected") == 1


def test_finished_counts_by_status_and_error() -> None:
    metrics = Metrics()
    metrics.finished("ok", None, 0.2)
    metrics.finished("ok", None, 0.3)
    metrics.finished("error", "device_offline", 1.5)
    metrics.finished("busy", "camera_busy", 0.4)
    assert sample(metrics, "capture_bridge_commands_total", {"status": "ok", "error": ""}) == 2
    assert sample(metrics, "capture_bridge_commands_total", {"status": "error", "error": "device_offline"}) == 1
    assert sample(metrics, "capture_bridge_commands_total", {"status": "busy", "error": "camera_busy"}) == 1
    # Known outcomes exist at zero before they first happen.
    assert sample(metrics, "capture_bridge_commands_total", {"status": "error", "error": "overloaded"}) == 0
    assert sample(metrics, "capture_bridge_command_seconds_count") == 4
    assert sample(metrics, "capture_bridge_command_seconds_sum") == pytest.approx(2.4)
    assert sample(metrics, "capture_bridge_command_seconds_bucket", {"le": "0.25"}) == 1


def test_an_unforeseen_outcome_is_still_counted() -> None:
    metrics = Metrics()
    metrics.finished("error", "something_new", 0.0)
    metrics.finished("error", "something_new", 0.0)
    assert sample(metrics, "capture_bridge_commands_total", {"status": "error", "error": "something_new"}) == 2


def test_cloud_call_histogram_spans_ten_ms_to_twenty_s() -> None:
    metrics = Metrics()
    metrics.cloud_call(0.005)
    metrics.cloud_call(14.0)
    assert sample(metrics, "capture_bridge_cloud_call_seconds_count") == 2
    assert sample(metrics, "capture_bridge_cloud_call_seconds_bucket", {"le": "0.01"}) == 1
    assert sample(metrics, "capture_bridge_cloud_call_seconds_bucket", {"le": "10.0"}) == 1
    assert sample(metrics, "capture_bridge_cloud_call_seconds_bucket", {"le": "15.0"}) == 2
    assert sample(metrics, "capture_bridge_cloud_call_seconds_bucket", {"le": "20.0"}) == 2


def test_load_and_connected_gauges() -> None:
    metrics = Metrics()
    metrics.load(7, 42)
    assert sample(metrics, "capture_bridge_in_flight") == 7
    assert sample(metrics, "capture_bridge_backlog") == 42
    metrics.load(0, 3)
    assert sample(metrics, "capture_bridge_in_flight") == 0
    assert sample(metrics, "capture_bridge_backlog") == 3
    metrics.set_connected(True)
    assert sample(metrics, "capture_bridge_mqtt_connected") == 1
    metrics.set_connected(False)
    assert sample(metrics, "capture_bridge_mqtt_connected") == 0


def test_render_is_prometheus_text() -> None:
    metrics = Metrics()
    metrics.finished("ok", None, 0.1)
    text = metrics.render().decode()
    assert "# TYPE capture_bridge_commands_total counter" in text
    assert 'capture_bridge_commands_total{error="",status="ok"} 1.0' in text


class Health:
    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> bool:
        return self.ok


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def server(health: Health) -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics()
    srv = MetricsServer(metrics, "127.0.0.1", 0, health)
    srv.start()
    assert srv.port != 0
    yield metrics, f"http://127.0.0.1:{srv.port}"
    srv.stop()


def test_metrics_endpoint(server: tuple[Metrics, str]) -> None:
    metrics, url = server
    metrics.finished("error", "cloud_unreachable", 0.5)
    status, content_type, body = get(url + "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    for name in (
        "capture_bridge_commands_total",
        "capture_bridge_command_seconds",
        "capture_bridge_cloud_call_seconds",
        "capture_bridge_in_flight",
        "capture_bridge_backlog",
        "capture_bridge_mqtt_connected",
    ):
        assert f"# TYPE {name} " in text
    assert 'capture_bridge_commands_total{error="cloud_unreachable",status="error"} 1.0' in text


def test_healthz_follows_the_callable(server: tuple[Metrics, str], health: Health) -> None:
    _, url = server
    assert get(url + "/healthz") == (200, "application/json", json.dumps({"status": "ok"}).encode())
    health.ok = False
    status, content_type, body = get(url + "/healthz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "unhealthy"}
    health.ok = True
    assert get(url + "/healthz")[0] == 200


def test_a_raising_health_check_is_unhealthy() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    srv = MetricsServer(Metrics(), "127.0.0.1", 0, broken)
    srv.start()
    try:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/healthz")
    finally:
        srv.stop()
    assert status == 503
    assert json.loads(body) == {"status": "unhealthy"}


@pytest.mark.parametrize("path", ["/", "/metric", "/healthz/x", "/favicon.ico"])
def test_other_paths_are_404(server: tuple[Metrics, str], path: str) -> None:
    _, url = server
    assert get(url + path)[0] == 404


def test_query_strings_are_ignored(server: tuple[Metrics, str]) -> None:
    _, url = server
    assert get(url + "/metrics?name[]=capture_bridge_backlog")[0] == 200


def test_no_access_log_on_stderr(server: tuple[Metrics, str], capfd: pytest.CaptureFixture[str]) -> None:
    _, url = server
    get(url + "/metrics")
    get(url + "/nope")
    assert capfd.readouterr().err == ""


def test_stop_closes_the_port_and_is_idempotent(health: Health) -> None:
    srv = MetricsServer(Metrics(), "127.0.0.1", 0, health)
    srv.stop()  # before start: nothing to do
    srv.start()
    port = srv.port
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    srv.stop()
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_healthz_reports_reasons_and_the_cloud_apart() -> None:
    report = [HealthReport((), "login ok as demo")]
    srv = MetricsServer(Metrics(), "127.0.0.1", 0, lambda: report[0])
    srv.start()
    try:
        url = f"http://127.0.0.1:{srv.port}/healthz"
        assert get(url)[0] == 200
        assert json.loads(get(url)[2]) == {"status": "ok", "mqtt": "ok", "cloud": "login ok as demo"}
        # The cloud failing alone never makes it 503: a restart cannot fix a password.
        report[0] = HealthReport((), "login_failed: login refused (Result 103)")
        assert get(url)[0] == 200
        report[0] = HealthReport(("the broker refused the subscription to devices/+/capture/set",), "unknown")
        status, _, body = get(url)
        assert status == 503
        assert json.loads(body) == {"status": "unhealthy", "mqtt": [
            "the broker refused the subscription to devices/+/capture/set"], "cloud": "unknown"}
    finally:
        srv.stop()


def test_mqtt_queue_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    queues = {"waiting": 0, "held": 0}
    metrics.watch_mqtt(lambda: queues["waiting"], lambda: queues["held"])
    assert sample(metrics, "capture_bridge_mqtt_waiting") == 0
    queues.update(waiting=2500, held=31)
    assert sample(metrics, "capture_bridge_mqtt_waiting") == 2500
    assert sample(metrics, "capture_bridge_commands_held") == 31
