"""A test-only fault switch: make one model version fail a share of the requests it answers.

``BOOKREC_TEST_FAULT_VERSION_ERROR_RATE="<version>=<rate>[,<version>=<rate>...]"`` (unset by
default, refused in production by the settings) makes every recommendations request that
the named version answers, alone (canary) or interleaved with the champion, fail with a 500
``injected_fault`` at that rate, before anything is computed. The request is logged like
any failed one (status and variant in ``api_logs``), so a rollout's breach check sees it:
``bench/replay.py``'s scenario (c) and the rollout flow's tests use it. Nothing else reads it.
"""

from __future__ import annotations

import random

from serving.validation import ApiError


def parse_rates(text: str | None) -> dict[str, float]:
    """``"v1=0.05,v2=1"`` -> ``{"v1": 0.05, "v2": 1.0}``; empty or unset -> ``{}``."""
    rates: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        version, sep, raw = part.strip().rpartition("=")
        try:
            rate = float(raw)
        except ValueError:
            rate = -1.0
        if not sep or not version or not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault switch entry {part.strip()!r}: expected VERSION=RATE "
                             "with RATE in [0, 1]")
        rates[version] = rate
    return rates


class FaultSwitch:
    """Fails requests of the configured versions at their rates (no-op when unset)."""

    def __init__(self, text: str | None, seed: int | None = None):
        """Parse the setting once per worker."""
        self.rates = parse_rates(text)
        self._rng = random.Random(seed)

    def check(self, *versions: str) -> None:
        """Raise the injected 500 for this request if one of ``versions`` draws a fault."""
        if not self.rates:
            return
        for version in versions:
            rate = self.rates.get(version)
            if rate and self._rng.random() < rate:
                raise ApiError(500, "injected_fault",
                               f"test fault switch: {version} fails {rate:.0%} of its requests")
