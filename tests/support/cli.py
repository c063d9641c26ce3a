"""`python -m bridge ...` as a user runs it from a shell, for the tests of what the CLI prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def bridge_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end; stdout and stderr captured as text, the exit code not checked.

    No CAPTURE_BRIDGE_* variable of this shell reaches it: what it reads is the test's own config.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTURE_BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env=env, cwd=cwd)
