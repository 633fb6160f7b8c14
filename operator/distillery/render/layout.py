"""The manifest templates under ``templates/`` and how they are filled (pure).

Templates only lay objects out: every value reaches them through ``tojson``, so no
value (a model name, a user's argument) can change a document's structure, and the
output parses as YAML whatever the value holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

# libyaml's safe loader is ~10x faster than the pure-Python one; reconciles are hot.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ENV = Environment(
    loader=PackageLoader("distillery.render", "templates"),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    # Packaged templates never change under a running operator: without this every
    # render stats the template's file to see whether it did.
    auto_reload=False,
)


_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def yaml_json(value: Any) -> str:
    """JSON that YAML parsers accept as is: ASCII only, and characters outside the
    basic plane as YAML's 8-digit escape instead of JSON's surrogate pairs."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)

    def astral(m: re.Match[str]) -> str:
        hi, lo = int(m.group(1), 16), int(m.group(2), 16)
        return f"\\U{0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00):08x}"

    return _SURROGATE_PAIR.sub(astral, text)


_ENV.filters["tojson"] = yaml_json


def load_template(template: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """One object: ``template`` rendered with ``context`` and parsed."""
    text = _ENV.get_template(template).render(**context)
    obj = yaml.load(text, Loader=_YAML_LOADER)
    assert isinstance(obj, dict)
    return obj
