"""Shared test support: an in-memory cluster for the controllers."""
