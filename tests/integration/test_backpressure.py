"""paho's queue full (MQTT_ERR_QUEUE_SIZE) through a real broker: states wait, they are never dropped."""

from __future__ import annotations

import asyncio
import json
import time

from bridge.config import MqttConfig
from bridge.mqtt import MqttAdapter
from bridge.service import Command
from tests.support.broker import Broker
from tests.support.probe import Probe


def test_states_are_kept_in_order_when_paho_refuses_more_and_commands_wait(
    broker: Broker, probe: Probe, base_topic: str
) -> None:
    probe.subscribe(f"{base_topic}/+/capture/state")
    commands: list[Command] = []

    async def go() -> tuple[bool, bool]:
        config = MqttConfig(url=broker.url, client_id=f"bp-{base_topic}", base_topic=base_topic)
        adapter = MqttAdapter(config, commands.append, before_ack=lambda: True)
        # paho's own limit, made small: it answers MQTT_ERR_QUEUE_SIZE exactly as at 65,535 waiting.
        adapter.client.max_queued_messages_set(20)
        task = asyncio.create_task(adapter.run())
        deadline = time.monotonic() + 10
        while not adapter.connected:
            assert time.monotonic() < deadline, "adapter did not connect"
            await asyncio.sleep(0.02)  # ok: polling a flag with a deadline
        for i in range(500):
            adapter.publish_state("dev", json.dumps({"status": "ok", "n": i}).encode())
        # What _flush_acks asks before acknowledging commands (absent before the fix: never held).
        held_back = getattr(adapter, "_held_back", lambda: False)()
        topic = f"{base_topic}/dev/capture/state"
        found = await asyncio.to_thread(probe.wait_for, lambda m: m.topic == topic, count=500, timeout=20)
        assert [json.loads(m.payload)["n"] for m in found] == list(range(500))  # none lost, in order
        released = not adapter.backpressure
        await adapter.close()
        task.cancel()
        return held_back, released

    held_back, released = asyncio.run(go())
    assert held_back  # commands are not acknowledged while states wait
    assert released
