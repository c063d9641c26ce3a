"""The cloud client on its real aiohttp transport against real servers: never fire a capture twice,
HTTPS, proxies, idle connections and malformed replies.

Each test drives `CloudClient` + `AiohttpTransport` (exactly what the bridge wires in `make_http`)
against the mock cloud over real sockets, and counts what reached the server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.bootstrap import make_http
from bridge.config import CloudConfig
from bridge.core.errors import CloudError, ErrorCode
from bridge.core.reply import InstructionReply
from bridge.infra.cloud import CloudClient
from bridge.infra.transport import AiohttpTransport
from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER, Fault
from bridge.sim.server import MockCloud
from tests.support.aio import run
from tests.support.proxy import ConnectProxy, Forwarder
from tests.support.tls import Pki, make_pki

PARAMS: dict[str, Any] = {"FCameraID": "0", "FType": 1, "FCount": 1, "FDuration": 0, "FResolution": 2, "FInterval": 0}
UNKNOWN = "the cloud may have received it"
# Real sockets, retries and TLS handshakes: a longer deadline for a hang than a unit test's.
DEADLINE = 30.0


def fresh_guid() -> str:
    return str(uuid.uuid4())


class Bridge:
    """The bridge's cloud side: one transport and one client, as `make_http` builds them."""

    def __init__(self, base_url: str, **cloud: Any) -> None:
        values: dict[str, Any] = {"base_url": base_url, "username": DEMO_USER, "password": DEMO_PASSWORD,
                                  "retry_backoff": 0.01, "retry_backoff_max": 0.05, "read_timeout": 5.0}
        values.update(cloud)
        self.config = CloudConfig.model_validate(values)
        self.transport: AiohttpTransport = make_http(self.config, 64)
        self.client = CloudClient(self.transport, self.config)

    async def capture(self, guid: str) -> InstructionReply | CloudError:
        try:
            return await self.client.capture(guid, PARAMS)
        except CloudError as exc:
            return exc

    async def close(self) -> None:
        await self.transport.aclose()


async def capture_once(base_url: str, guid: str, **cloud: Any) -> InstructionReply | CloudError:
    bridge = Bridge(base_url, **cloud)
    try:
        return await bridge.capture(guid)
    finally:
        await bridge.close()


def failed(outcome: InstructionReply | CloudError) -> CloudError:
    assert isinstance(outcome, CloudError), outcome
    return outcome


@pytest.fixture
def ok_cloud(cloud: MockCloud) -> MockCloud:
    cloud.default_behaviour = "ok"
    return cloud


# --- never twice ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (Fault.CLOSE, "closed the connection without a reply"),
        (Fault.RESET, "connection reset"),
        (Fault.HTTP_500, "HTTP 500"),
        (Fault.HTTP_502, "HTTP 502"),
        (Fault.HTTP_504, "HTTP 504"),
        (Fault.HANG, "no reply within 0.5 s"),
        (Fault.SLOW, "no reply within 0.5 s"),
    ],
)
def test_exactly_one_post_when_the_server_fails_after_reading(ok_cloud: MockCloud, fault: Fault, says: str) -> None:
    guid = fresh_guid()
    ok_cloud.device_faults[guid] = fault
    ok_cloud.slow_delay = 1.0

    exc = failed(run(capture_once(ok_cloud.url, guid, read_timeout=0.5, retry_attempts=5), DEADLINE))

    assert len(ok_cloud.instructions_for(guid)) == 1
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert says in exc.message
    assert exc.message.endswith(UNKNOWN), exc.message


def test_exactly_one_post_when_a_reused_connection_dies_after_reading(ok_cloud: MockCloud) -> None:
    first, second = fresh_guid(), fresh_guid()
    ok_cloud.device_faults[second] = Fault.CLOSE

    async def scenario() -> tuple[InstructionReply | CloudError, InstructionReply | CloudError, int]:
        bridge = Bridge(ok_cloud.url, retry_attempts=5)
        try:
            one = await bridge.capture(first)
            opened = bridge.transport.connections_opened
            two = await bridge.capture(second)
            return one, two, bridge.transport.connections_opened - opened
        finally:
            await bridge.close()

    one, two, new_connections = run(scenario(), DEADLINE)

    assert isinstance(one, InstructionReply)
    assert new_connections == 0, "the second capture went out on the pooled connection"
    assert failed(two).message.endswith(UNKNOWN)
    assert len(ok_cloud.instructions_for(second)) == 1


def test_device_timeout_is_sent_once(cloud: MockCloud) -> None:
    guid = fresh_guid()
    cloud.devices[guid] = "timeout"

    exc = failed(run(capture_once(cloud.url, guid, retry_attempts=5), DEADLINE))

    assert (exc.code, exc.result) == (ErrorCode.DEVICE_TIMEOUT, 138)
    assert exc.message.endswith(UNKNOWN)
    assert len(cloud.instructions_for(guid)) == 1


def test_503_then_200_is_two_posts(ok_cloud: MockCloud) -> None:
    guid = fresh_guid()
    ok_cloud.retry_after = 0.1
    ok_cloud.fault_count = 1
    ok_cloud.fault = Fault.HTTP_503

    reply = run(capture_once(ok_cloud.url, guid, retry_attempts=5), DEADLINE)

    assert isinstance(reply, InstructionReply)
    assert reply.message == "ins send ok (after 2 tries)"
    assert len(ok_cloud.instructions_for(guid)) == 2


def test_refused_connection_is_retried_and_says_so() -> None:
    with MockCloud() as gone:
        url = gone.url
    exc = failed(run(capture_once(url, fresh_guid(), retry_attempts=3), DEADLINE))

    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert "connection refused" in exc.message
    assert exc.message.endswith("(after 3 tries)")
    assert UNKNOWN not in exc.message


# --- HTTPS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("cloud-pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("other-pki")).ca_cert


@pytest.fixture(scope="module")
def tls_cloud(pki: Pki) -> Iterator[MockCloud]:
    with MockCloud(tls_cert=pki.server_cert, tls_key=pki.server_key, default_behaviour="ok") as cloud:
        yield cloud


def test_https_verified_with_ca_file(tls_cloud: MockCloud, pki: Pki) -> None:
    guid = fresh_guid()
    assert tls_cloud.url.startswith("https://127.0.0.1:")

    reply = run(capture_once(tls_cloud.url, guid, ca_file=str(pki.ca_cert)), DEADLINE)

    assert isinstance(reply, InstructionReply), reply
    assert len(tls_cloud.instructions_for(guid)) == 1


@pytest.mark.parametrize("mismatch", ["wrong_ca", "wrong_host"])
def test_https_refused_once_with_a_clear_message(tls_cloud: MockCloud, pki: Pki, other_ca: Path,
                                                  mismatch: str) -> None:
    # The certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same loopback under another name.
    host = "127.0.0.2" if mismatch == "wrong_host" else "127.0.0.1"
    ca = other_ca if mismatch == "wrong_ca" else pki.ca_cert

    async def scenario() -> tuple[InstructionReply | CloudError, int]:
        async with Forwarder("127.0.0.1", tls_cloud.port, host=host) as relay:
            outcome = await capture_once(f"https://{host}:{relay.port}/OpenApi", fresh_guid(),
                                         ca_file=str(ca), retry_attempts=5)
            return outcome, relay.connections

    outcome, connections = run(scenario(), DEADLINE)

    exc = failed(outcome)
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert "TLS certificate verification failed" in exc.message
    expected = "IP address mismatch" if mismatch == "wrong_host" else "unable to get local issuer certificate"
    assert expected in exc.message
    assert connections == 1, "a refused certificate is not tried again"


@pytest.mark.parametrize("fault", [Fault.HUGE_LENGTH, Fault.GZIP, Fault.TRUNCATED])
def test_malformed_replies_over_tls_are_errors_not_tracebacks(tls_cloud: MockCloud, pki: Pki, fault: Fault) -> None:
    guid = fresh_guid()
    tls_cloud.device_faults[guid] = fault
    try:
        exc = failed(run(capture_once(tls_cloud.url, guid, ca_file=str(pki.ca_cert), retry_attempts=5), DEADLINE))
    finally:
        tls_cloud.device_faults.clear()

    assert exc.code in (ErrorCode.BAD_CLOUD_REPLY, ErrorCode.CLOUD_UNREACHABLE)
    assert exc.message.endswith(UNKNOWN), exc.message
    assert len(tls_cloud.instructions_for(guid)) == 1


def test_concurrent_cold_calls_to_a_host_name_share_one_dns_lookup(tls_cloud: MockCloud, pki: Pki) -> None:
    async def scenario() -> tuple[list[InstructionReply | CloudError], int]:
        bridge = Bridge(f"https://localhost:{tls_cloud.port}/OpenApi", ca_file=str(pki.ca_cert))
        try:
            outcomes = await asyncio.gather(*(bridge.capture(fresh_guid()) for _ in range(50)))
            return list(outcomes), bridge.transport.dns_lookups
        finally:
            await bridge.close()

    outcomes, lookups = run(scenario(), DEADLINE)

    assert all(isinstance(o, InstructionReply) for o in outcomes), [o for o in outcomes if isinstance(o, CloudError)]
    assert lookups == 1


# --- proxies ----------------------------------------------------------------------------------------
@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("bypass", [False, True])
def test_https_proxy_from_the_environment(tls_cloud: MockCloud, pki: Pki, proxy_env: pytest.MonkeyPatch,
                                          bypass: bool) -> None:
    guid = fresh_guid()

    async def scenario() -> tuple[InstructionReply | CloudError, list[str]]:
        async with ConnectProxy() as proxy:
            proxy_env.setenv("HTTPS_PROXY", proxy.url)
            if bypass:
                proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
            outcome = await capture_once(tls_cloud.url, guid, ca_file=str(pki.ca_cert))
            return outcome, proxy.tunnels

    outcome, tunnels = run(scenario(), DEADLINE)

    assert isinstance(outcome, InstructionReply), outcome
    assert tunnels == ([] if bypass else [f"127.0.0.1:{tls_cloud.port}"])
    assert len(tls_cloud.instructions_for(guid)) == 1


# --- idle connections -------------------------------------------------------------------------------
def test_pooled_connection_silently_dropped_costs_no_timeout(ok_cloud: MockCloud) -> None:
    async def scenario() -> tuple[InstructionReply | CloudError, InstructionReply | CloudError, int]:
        async with Forwarder("127.0.0.1", ok_cloud.port) as nat:
            bridge = Bridge(f"http://127.0.0.1:{nat.port}/OpenApi", keepalive_timeout=0.3, read_timeout=3.0,
                            retry_attempts=1)
            try:
                first = await bridge.capture(fresh_guid())
                # The NAT forgets the idle flow without telling anyone.
                nat.black_hole()
                # The pool closes it after keepalive_timeout, before the next capture needs it.
                await asyncio.wait_for(nat.flows[0].client_closed.wait(), 10)
                second = await bridge.capture(fresh_guid())
                return first, second, nat.connections
            finally:
                await bridge.close()

    first, second, connections = run(scenario(), DEADLINE)

    assert isinstance(first, InstructionReply)
    assert isinstance(second, InstructionReply), second
    assert connections == 2


def test_pooled_connection_closed_by_the_server_is_replaced_quietly() -> None:
    # A server that closes idle keep-alive connections before the bridge's own expiry does.
    with MockCloud(default_behaviour="ok", idle_timeout=0.2) as quick_closer:

        async def scenario() -> tuple[InstructionReply | CloudError, InstructionReply | CloudError, int]:
            # The first capture may itself meet a connection the server just closed (the login's): then it
            # is retried, since nothing was written; the second one starts after every close was seen.
            bridge = Bridge(quick_closer.url, retry_attempts=3)
            try:
                first = await bridge.capture(fresh_guid())
                opened = bridge.transport.connections_opened
                # The server runs in its own thread and loop: nothing to await across, so poll.
                async with asyncio.timeout(10):
                    while quick_closer.open_connections:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # ok: polling the server's idle expiry
                second = await bridge.capture(fresh_guid())
                return first, second, bridge.transport.connections_opened - opened
            finally:
                await bridge.close()

        first, second, opened = run(scenario(), DEADLINE)

    assert isinstance(first, InstructionReply), first
    assert isinstance(second, InstructionReply), second
    assert second.tries == 1
    assert opened == 1
