"""Health of the sa2va node for ``/diagnostics``: input problems counted per kind, one status per period.

ROS-free except ``diagnostic_array``, which builds the ``diagnostic_msgs/DiagnosticArray`` (imported there).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
INTERNAL_PREFIX = "internal."  # problem kinds that are this node's fault, not its input's: level ERROR


class ProblemLog:
    """Problems counted per kind ("image.truncated", "command.empty", ...); thread-safe.

    ``record`` says whether it is the first of its kind, the one a node logs; later ones are only counted
    and show in diagnostics, so a flood of bad input cannot flood the log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_at_last_take: Counter[str] = Counter()

    def record(self, kind: str, count: int = 1) -> bool:
        """Count ``count`` problems of ``kind``; True when they are the first ones of that kind."""
        with self._lock:
            first = kind not in self._counts
            self._counts[kind] += count
            return first

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def take_new(self) -> dict[str, int]:
        """Problems recorded since the previous call, per kind."""
        with self._lock:
            new = self._counts - self._counts_at_last_take
            self._counts_at_last_take = Counter(self._counts)
            return dict(new)


@dataclass(frozen=True)
class HealthStatus:
    """One diagnostic status: level (OK / WARN / ERROR), a one-line summary and key values."""

    level: int
    message: str
    values: tuple[tuple[str, str], ...]


def health_status(
    node_stats: Mapping[str, Any],
    pipeline_stats: Mapping[str, Any],
    problems: Mapping[str, int],
    new_problems: Mapping[str, int],
    seconds_without_image: float | None,
    no_image_warning_s: float,
) -> HealthStatus:
    """Summarise the node's health: WARN for silence or rejected input in the last period, ERROR for its own faults.

    ``seconds_without_image`` is None while the node is not active.
    """
    level, notes = OK, []
    if seconds_without_image is not None and 0 < no_image_warning_s <= seconds_without_image:
        level = WARN
        notes.append(f"no image for {seconds_without_image:.1f} s")
    if new_problems:
        internal = any(kind.startswith(INTERNAL_PREFIX) for kind in new_problems)
        level = max(level, ERROR if internal else WARN)
        notes.append("problems: " + ", ".join(f"{kind} x{count}" for kind, count in sorted(new_problems.items())))
    if not notes:
        fps = node_stats.get("fps")
        notes.append(f"{pipeline_stats.get('targets', 0)} target(s), {fps or 0.0:.1f} fps")
    values = [(f"node.{key}", _text(value)) for key, value in sorted(node_stats.items())]
    values += [(f"pipeline.{key}", _text(value)) for key, value in sorted(pipeline_stats.items())]
    values += [(f"problems.{kind}", str(count)) for kind, count in sorted(problems.items())]
    return HealthStatus(level, "; ".join(notes), tuple(values))


def _text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def diagnostic_array(status: HealthStatus, name: str, hardware_id: str, stamp: Any) -> Any:
    """A ``diagnostic_msgs/DiagnosticArray`` holding ``status``, stamped ``stamp`` (builtin_interfaces/Time)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from std_msgs.msg import Header

    return DiagnosticArray(
        header=Header(stamp=stamp),
        status=[
            DiagnosticStatus(
                level=bytes([status.level]),
                name=name,
                message=status.message,
                hardware_id=hardware_id,
                values=[KeyValue(key=key, value=value) for key, value in status.values],
            )
        ],
    )
