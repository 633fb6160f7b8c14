"""The one content hash: SHA-256 over canonical JSON, truncated.

A revision (10 characters: it is a label value users read) and the applied-hash
annotation (16) are both this hash; changing either length re-rolls every workload.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of ``obj`` as canonical JSON (sorted keys), cut to ``length``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]
