"""Messages every daemon serves, whatever its domain."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.wire import Method

STARTED_TOPIC = "daemon.started"


@dataclass(frozen=True)
class HealthRequest:
    pass


@dataclass(frozen=True)
class Health:
    """A daemon's own view of whether it can do its job."""

    service: str
    pid: int
    started_at: float
    ready: bool
    reason: str = ""  # CamelCase, as CRI condition reasons are
    message: str = ""
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Started:
    """Published once when a daemon starts serving: subscribers resynchronise on it."""

    service: str
    pid: int
    started_at: float


HEALTH = Method("health", HealthRequest, Health)
