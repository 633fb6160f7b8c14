"""The reconciler's decision (pure): what is observed in, the desired children, status
and events out (:mod:`.desired`); what a live child looks like (:mod:`.children`).
"""

from distillery.api.events import Event
from distillery.api.hashing import content_hash
from distillery.reconcile.desired import (
    OWNED_STATUS,
    Desired,
    desired_state,
    parse,
    parsed_metadata,
    stamp,
)

__all__ = [
    "OWNED_STATUS",
    "Desired",
    "Event",
    "content_hash",
    "desired_state",
    "parse",
    "parsed_metadata",
    "stamp",
]
