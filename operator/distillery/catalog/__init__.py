"""Catalogs of model architectures and GPU types, with default prices (pure).

The entries and the loader are in :mod:`.catalog`; the built-in YAML in ``data/``.
"""

from distillery.catalog.catalog import (
    Catalog,
    CatalogError,
    GpuType,
    ModelEntry,
    load_catalog,
    unread_expert_fraction,
)

__all__ = [
    "Catalog",
    "CatalogError",
    "GpuType",
    "ModelEntry",
    "load_catalog",
    "unread_expert_fraction",
]
