"""What imaged tells /metrics about its pulls (CRI-O's image_pulls_* and image_layer_reuse)."""

from __future__ import annotations

from shared.errors import CriplexError
from shared.schema.common import LabeledValue, MetricsReport


class PullStats:
    """Counters since imaged started; only ever touched on its event loop."""

    def __init__(self) -> None:
        self.bytes = 0
        self.succeeded = 0
        self.layers_reused = 0
        self.failures: dict[str, int] = {}

    def add_bytes(self, delta: int) -> None:
        # Progress goes back when a download restarts from zero; a counter never does.
        if delta > 0:
            self.bytes += delta

    def failed(self, exc: BaseException) -> None:
        error = exc.code.name if isinstance(exc, CriplexError) else type(exc).__name__
        self.failures[error] = self.failures.get(error, 0) + 1

    def report(self) -> MetricsReport:
        return MetricsReport(
            values={"image_pulls_bytes_total": float(self.bytes),
                    "image_pulls_success_total": float(self.succeeded),
                    "image_layer_reuse_total": float(self.layers_reused)},
            series=tuple(LabeledValue("image_pulls_failure_total", {"error": error}, float(count))
                         for error, count in sorted(self.failures.items())),
        )
