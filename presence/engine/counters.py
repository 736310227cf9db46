"""The engine's counters: one typed int attribute each (``__slots__``), so a misspelt counter is
an AttributeError instead of a new key; metrics, the history and tests read them by name too
(``counters["notify_sent"]``)."""

from __future__ import annotations

from collections.abc import Iterator

NAMES = (
    "sip_requests_received",
    "sip_responses_received",
    "sip_malformed",
    "sip_dropped",
    "sip_untrusted",
    "sip_retransmissions_received",
    "subscribe_accepted",
    "subscribe_rejected",
    "subscribe_fetch",
    "notify_sent",
    "notify_failed",
    "notify_timeouts",
    "notify_unmatched_responses",
    "notify_responses_wrong_source",
    "notify_errors",
    "subscriptions_removed_unsubscribe",
    "subscriptions_removed_expired",
    "subscriptions_removed_notify_rejected",
    "subscriptions_removed_notify_timeout",
    "subscriptions_removed_shutdown",
    "subscriptions_removed_notify_error",
    "subscriptions_removed_unresolvable",
    "updates_applied",
    "limit_total",
    "limit_source",
    "limit_watcher",
    "limit_rate",
    "limit_pending",
    "limit_overload",
    "subscribe_rate_dropped",
    "target_refused",
    "notify_minimal",
    "notify_withheld",
    "registration_refused",
)


class EngineCounters:
    """Every counter of :data:`NAMES`, starting at zero."""

    __slots__ = NAMES

    def __init__(self) -> None:
        for name in NAMES:
            setattr(self, name, 0)

    def __getitem__(self, name: str) -> int:
        """The counter ``name``; KeyError for a name that is no counter."""
        if name not in _KNOWN:
            raise KeyError(name)
        return getattr(self, name)

    def add(self, name: str, amount: int = 1) -> None:
        """Count ``amount`` more under ``name`` (a name made at run time; KeyError if unknown)."""
        setattr(self, name, self[name] + amount)

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in NAMES}


_KNOWN = frozenset(NAMES)
