"""What every slow check prints: one PASS/FAIL line per check; the run passes when none failed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# What a check raises to fail (with the reason as its message); anything else is a bug in the check.
FAILS = (AssertionError, TimeoutError, RuntimeError, KeyError, TypeError, ValueError)


class Report:
    """PASS/FAIL lines, and the names of the checks that failed."""

    def __init__(self) -> None:
        self.passes = 0
        self.failures: list[str] = []

    @property
    def failed(self) -> int:
        """How many checks failed."""
        return len(self.failures)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Print one result."""
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        if ok:
            self.passes += 1
        else:
            self.failures.append(name)
        return ok

    def run(self, name: str, check: Callable[[], str]) -> bool:
        """Run one check: it returns a detail, or raises one of FAILS to fail."""
        try:
            detail = check()
        except FAILS as exc:
            return self.check(name, False, f"{type(exc).__name__}: {exc}"[:600])
        return self.check(name, True, detail)

    async def arun(self, name: str, check: Callable[[], Awaitable[str]]) -> bool:
        """`run` for a check that awaits."""
        try:
            detail = await check()
        except FAILS as exc:
            return self.check(name, False, f"{type(exc).__name__}: {exc}"[:600])
        return self.check(name, True, detail)
