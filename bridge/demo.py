"""`make demo`: the whole loop on one machine, then everything stops.

Mock cloud (embedded) -> broker (127.0.0.1:1883 if one answers, else a private
Mosquitto, else an embedded pure-Python broker) -> the real bridge process ->
one sample capture published like Home Assistant would -> the state printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER
from bridge.sim.server import MockCloud

DEMO_GUID = "a64b2e58-9305-4a01-9c51-092205123945"


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker on port {port} did not come up")
        time.sleep(0.05)


@contextlib.contextmanager
def broker(workdir: Path) -> Iterator[tuple[int, str]]:
    """Yield (port, protocol) of a broker to use, starting one if 1883 is silent."""
    if _answers(1883):
        print("broker: using the one on 127.0.0.1:1883")
        yield 1883, "5"
        return
    port = _free_port()
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"broker: started a private Mosquitto on 127.0.0.1:{port}")
        try:
            _wait_port(port)
            yield port, "5"
        finally:
            proc.terminate()
            proc.wait(10)
        return
    # No Mosquitto anywhere: amqtt is a pure-Python MQTT 3.1.1 broker.
    try:
        import amqtt  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "amqtt"], check=True)
    script = (
        "import asyncio,sys\nfrom amqtt.broker import Broker\n"
        "async def main():\n"
        f"    b=Broker({{'listeners':{{'default':{{'type':'tcp','bind':'127.0.0.1:{port}'}}}},"
        "'auth':{'allow-anonymous':True},'topic-check':{'enabled':False}})\n"
        "    await b.start()\n    await asyncio.Event().wait()\nasyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"broker: started an embedded amqtt broker on 127.0.0.1:{port} (MQTT 3.1.1)")
    try:
        _wait_port(port, 30)
        yield port, "3.1.1"
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(workdir: Path, port: int, protocol: str, base: str, cloud_url: str) -> Path:
    """The demo bridge's config file: the embedded broker, the mock cloud, one device."""
    config: dict[str, Any] = {
        # No persistent session: the demo must leave nothing behind on someone's broker.
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "client_id": base, "base_topic": base,
                 "protocol": protocol, "persistent_session": False},
        "cloud": {"base_url": cloud_url, "username": DEMO_USER, "password": DEMO_PASSWORD},
        "devices": {"truck-12": DEMO_GUID},
        "bridge": {"journal_path": str(workdir / "journal.sqlite")},
        "homeassistant": {"enabled": False},
    }
    config_path = workdir / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def main() -> int:
    """Run the demo; exit 0 when the sample capture comes back ok."""
    workdir = Path(tempfile.mkdtemp(prefix="capture-bridge-demo-"))
    base = f"capture-bridge-demo-{uuid.uuid4().hex[:6]}"  # never touch a real bridge's topics
    with MockCloud(port=0) as cloud, broker(workdir) as (port, protocol):
        print(f"mock cloud: {cloud.url} (user {DEMO_USER})")
        config_path = write_config(workdir, port, protocol, base, cloud.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTURE_BRIDGE_")}
        bridge = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", str(config_path)], env=env)

        got: dict[str, Any] = {}
        done = threading.Event()
        online = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{base}-user",
                             protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311)

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            if msg.topic.endswith("bridge/state") and b"online" in msg.payload:
                online.set()
            elif msg.topic.endswith("capture/state") and msg.payload:
                state = json.loads(msg.payload)
                if state["status"] != "pending":
                    got.update(state)
                    done.set()

        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            client.subscribe(f"{base}/#", qos=1)
            if not online.wait(20):
                print("demo: the bridge did not come online", file=sys.stderr)
                return 1
            command = {"type": "photo", "count": 3, "resolution": "720p", "interval": 2, "request_id": "demo-1"}
            topic = f"{base}/truck-12/capture/set"
            print(f"\n$ mosquitto_pub -p {port} -t {topic} -q 1 -m '{json.dumps(command)}'")
            client.publish(topic, json.dumps(command), qos=1).wait_for_publish(10)
            if not done.wait(20):
                print("demo: no state arrived", file=sys.stderr)
                return 1
            print(f"\n{base}/truck-12/capture/state:")
            print(json.dumps(got, indent=2))
        finally:
            bridge.send_signal(signal.SIGTERM)
            code = bridge.wait(30)
            print(f"\nbridge stopped (exit {code})")
            # Leave no retained demo messages behind on a shared broker.
            for leftover in (f"{base}/truck-12/capture/state", f"{base}/bridge/state"):
                client.publish(leftover, b"", qos=1, retain=True).wait_for_publish(5)
            client.loop_stop()
            client.disconnect()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if got.get("status") == "ok" and got.get("file_id") else 1


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
