"""Back-pressure through a real broker: states wait and are never dropped; commands wait, in order."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.config import MqttConfig
from bridge.core import topics
from bridge.core.messages import Command, Route
from bridge.mqtt.adapter import MqttAdapter
from bridge.mqtt.inbound import PUBLISH_HIGH_WATER
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.waits import wait_until_async


def test_states_are_kept_in_order_when_paho_refuses_more_and_commands_wait(
    broker: Broker, probe: Probe, base_topic: str
) -> None:
    probe.subscribe(f"{base_topic}/+/capture/state")
    commands: list[Command] = []
    total = PUBLISH_HIGH_WATER + 500  # more than may wait before commands are held back

    async def go() -> tuple[bool, bool]:
        config = MqttConfig(url=broker.url, client_id=f"bp-{base_topic}", base_topic=base_topic)
        adapter = MqttAdapter(config, commands.append, before_ack=lambda: True)
        # paho's own limit, made small: it answers MQTT_ERR_QUEUE_SIZE exactly as at 65,535 waiting.
        adapter.client.max_queued_messages_set(20)
        task = asyncio.create_task(adapter.run())
        await wait_until_async(lambda: adapter.connected, what="adapter did not connect")
        for i in range(total):
            adapter.publish_state("dev", json.dumps({"status": "ok", "n": i}).encode())
        # What _flush_acks asks before acknowledging commands (absent before the fix: never held).
        held_back = adapter.inbound.held_back()
        topic = f"{base_topic}/dev/capture/state"
        found = await asyncio.to_thread(probe.wait_for, lambda m: m.topic == topic, count=total, timeout=30)
        assert [json.loads(m.payload)["n"] for m in found] == list(range(total))  # none lost, in order
        released = not adapter.inbound.backpressure
        await adapter.close()
        task.cancel()
        return held_back, released

    held_back, released = asyncio.run(go())
    assert held_back  # commands are not acknowledged while states wait
    assert released


def test_commands_that_arrive_under_back_pressure_wait_unacknowledged_and_run_in_order(
    broker: Broker, probe: Probe, base_topic: str
) -> None:
    # Mosquitto 2.0 does not always stop at our Receive Maximum while we hold acknowledgements
    # back (eclipse/mosquitto#2301); whatever arrives then must wait, not run, and stay the
    # broker's until it does. Back-pressure itself (states the broker has not taken) is switched
    # by hand here: with a real broker it lasts only as long as the broker is slower than us.
    received: list[Command] = []
    pressure = [True]
    client_id = f"held-{base_topic}"

    def adapter_for() -> MqttAdapter:
        config = MqttConfig(url=broker.url, client_id=client_id, base_topic=base_topic)
        adapter = MqttAdapter(config, received.append, before_ack=lambda: True)
        real = adapter.inbound.held_back
        adapter.inbound.held_back = lambda: pressure[0] or real()  # type: ignore[method-assign]
        adapter.inbound.backpressure = pressure[0]
        return adapter

    async def go() -> None:
        adapter = adapter_for()
        task = asyncio.create_task(adapter.run())
        await wait_until_async(lambda: adapter.listening, what="no command subscription")
        for i in range(30):
            await asyncio.to_thread(probe.publish, f"{base_topic}/dev-{i % 3}/capture/set", {"request_id": f"r{i}"})
        await asyncio.sleep(0.5)  # ok: proving that nothing happens for a while
        assert received == []  # held: not run
        assert adapter.held_commands == 30
        await adapter.close()  # ...and not acknowledged: the broker delivers them again
        task.cancel()

        pressure[0] = True
        again = adapter_for()
        task = asyncio.create_task(again.run())
        await wait_until_async(lambda: again.listening, what="no command subscription after the restart")
        await asyncio.sleep(0.5)  # ok: proving that nothing happens for a while
        assert received == []
        pressure[0] = False  # the broker caught up: held commands run, in arrival order
        await wait_until_async(lambda: len(received) >= 30, what=lambda: f"held commands not released: {len(received)}")
        assert [json.loads(c.payload)["request_id"] for c in received] == [f"r{i}" for i in range(30)]
        await again.close()
        task.cancel()

        received.clear()
        last = adapter_for()  # everything was acknowledged once it ran: nothing comes back
        task = asyncio.create_task(last.run())
        await wait_until_async(lambda: last.listening, what="no command subscription the third time")
        await asyncio.to_thread(probe.publish, f"{base_topic}/dev-0/capture/set", {"request_id": "fresh"})
        await wait_until_async(lambda: bool(received), what="a new command was not delivered")
        assert [json.loads(c.payload)["request_id"] for c in received] == ["fresh"]
        await last.close()
        task.cancel()

    asyncio.run(go())


def test_a_discovery_announcement_does_not_hold_commands_back(broker: Broker, base_topic: str) -> None:
    # 3,000 cameras are ~42,000 discovery messages: commands must not wait for Home Assistant's
    # announcement to drain (the announcement bounds itself: one at a time).
    async def go() -> tuple[bool, bool]:
        config = MqttConfig(url=broker.url, client_id=f"bulk-{base_topic}", base_topic=base_topic)
        adapter = MqttAdapter(config, lambda command: None, before_ack=lambda: True)
        task = asyncio.create_task(adapter.run())
        await wait_until_async(lambda: adapter.connected, what="adapter did not connect")
        acked: list[int] = []
        for i in range(PUBLISH_HIGH_WATER + 500):
            adapter.publish(f"ha-{base_topic}/camera/{i}/config", b"{}", qos=1, retain=False,
                            on_acked=lambda: acked.append(1), bulk=True)
        bulk_held_back = adapter.inbound.held_back()
        for i in range(PUBLISH_HIGH_WATER + 500):
            adapter.publish_state("dev", json.dumps({"n": i}).encode(), retain=False)
        states_held_back = adapter.inbound.held_back()
        # Every bulk message still reaches the broker.
        await wait_until_async(lambda: len(acked) >= PUBLISH_HIGH_WATER + 500, seconds=20,
                               what=lambda: f"{len(acked)} bulk messages acknowledged")
        await adapter.close()
        task.cancel()
        return bulk_held_back, states_held_back

    bulk_held_back, states_held_back = asyncio.run(go())
    assert not bulk_held_back
    assert states_held_back


@pytest.mark.parametrize("qos", [0, 1])
def test_a_settings_change_keeps_its_place_behind_held_commands(
    broker: Broker, probe: Probe, base_topic: str, qos: int
) -> None:
    # A held capture runs later; it must not pick up settings that were sent after it, whatever their
    # QoS (the README's own mosquitto_pub example sends them at QoS 0, which the broker does not hold).
    seen: list[str] = []
    pressure = [True]

    async def go() -> None:
        config = MqttConfig(url=broker.url, client_id=f"order-{base_topic}", base_topic=base_topic)
        adapter = MqttAdapter(
            config,
            lambda command: seen.append("capture " + json.loads(command.payload)["request_id"]),
            before_ack=lambda: True,
            routes=[Route(topics.settings_set_filter(base_topic), lambda t, p, r: seen.append("settings"),
                          ordered=True)],
        )
        real = adapter.inbound.held_back
        adapter.inbound.held_back = lambda: pressure[0] or real()  # type: ignore[method-assign]
        adapter.inbound.backpressure = True
        task = asyncio.create_task(adapter.run())
        await wait_until_async(lambda: adapter.listening and not adapter.subscriptions.pending, what="no subscriptions")
        await asyncio.to_thread(probe.publish, f"{base_topic}/truck/capture/set", {"request_id": "r1"})
        await asyncio.to_thread(probe.publish, topics.settings_set_topic(base_topic, "truck"), {"resolution": "1080p"},
                                qos=qos)
        await asyncio.to_thread(probe.publish, f"{base_topic}/truck/capture/set", {"request_id": "r2"})
        await wait_until_async(lambda: adapter.held_commands >= 3, what=lambda: f"{adapter.held_commands} held")
        assert seen == []
        pressure[0] = False
        await wait_until_async(lambda: len(seen) >= 3, what=lambda: f"released: {seen}")
        assert seen == ["capture r1", "settings", "capture r2"]
        await adapter.close()
        task.cancel()

    asyncio.run(go())
