"""The mock cloud with a tap, for `bench.run --tap`: where does the time go between MQTT and the cloud?

`python -m bench.cloudtap --port P --latency S --times FILE` serves exactly what
`python -m bridge mock-cloud --any-device` serves (it *is* `bridge.sim.server.MockCloud`)
and also appends the arrival time of every Instruction request, as
`time.monotonic()`, and its FAssetGUID to FILE (one "time guid" per line,
flushed every 50 ms). CLOCK_MONOTONIC
is system-wide on Linux and the load generator's `perf_counter` reads the same
clock, so the parent can split end-to-end latency into "publish -> cloud got the
request" and "cloud answered -> state arrived".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import time
from typing import Any

from bridge.sim.server import MockCloud

_GUID = re.compile(rb'"FAssetGUID"\s*:\s*"([^"]+)"')


class TapCloud(MockCloud):
    """MockCloud that notes when each Instruction arrives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[float, str]] = []

    def _reply(self, method: str, path: str, raw: bytes) -> Any:
        if path.endswith("/Instruction"):
            now = time.monotonic()
            match = _GUID.search(raw)
            self.arrivals.append((now, match.group(1).decode() if match else "?"))
        return super()._reply(method, path, raw)


async def serve(cloud: TapCloud, times_path: str) -> None:
    """Serve until SIGTERM/SIGINT, flushing arrival times to `times_path`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cloud._open()
    print(f"mock-cloud listening on {cloud.url} (tap)", flush=True)
    with open(times_path, "a") as out:  # noqa: ASYNC230 - tiny appends, the loop is ours
        written = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
            fresh = cloud.arrivals[written:]
            if fresh:
                out.write("".join(f"{t:.6f} {guid}\n" for t, guid in fresh))
                out.flush()
                written += len(fresh)
    await cloud._close()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--times", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args(argv)
    cloud = TapCloud(host=args.host, port=args.port, latency=args.latency, default_behaviour="ok", record=False,
                     tls_cert=args.tls_cert, tls_key=args.tls_key)
    asyncio.run(serve(cloud, args.times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
