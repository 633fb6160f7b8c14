"""Kubernetes events a decision asks to post: one type for the reconciler and rollouts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """An event on the DMD: ``type`` is Normal or Warning, ``reason`` one CamelCase word."""

    type: str
    reason: str
    message: str
