"""The manifest templates under ``templates/`` and how they are filled (pure).

Templates only lay objects out: every value reaches them through ``tojson``, so no
value (a model name, a user's argument) can change a document's structure, and the
output parses as YAML whatever the value holds.

That also makes parsing cheap. PyYAML builds every node of a document in Python, and a
reconcile renders three to six documents: that was a quarter of the operator's CPU in a
burst of DMDs. So each value is rendered as a placeholder instead, the document that
results (its *layout*: the same for every DMD that takes the same branches of the
template) is parsed once and kept, and the values are put in where their placeholders
are, decoded by the C JSON parser with YAML's reading of numbers. A layout in which a
placeholder is not a whole value (a template that writes ``name: x-{{ v | tojson }}``)
is parsed the plain way; both ways give the same objects (tests/unit/test_render.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context
from jinja2.runtime import Context

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


# Where a layout is rendered, the values tojson was given, in order.
_VALUES = "_distillery_layout_values"
_PLACEHOLDER = "__distillery_value_{}__"
_WHOLE_PLACEHOLDER = re.compile(r"__distillery_value_(\d+)__")
# Distinct layouts are few (templates times the branches taken); the bound only guards
# against a template that writes a value outside tojson, making every layout new.
_LAYOUTS_KEPT = 256
_layouts: dict[str, Any] = {}
# PyYAML's (YAML 1.1) float: JSON's "1e-05" (no dot) and "1.5e10" (unsigned exponent)
# are strings to it, and so they are here.
_YAML_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?)$"
)


@pass_context
def _tojson(context: Context, value: Any) -> str:
    values = context.get(_VALUES)
    if values is None:
        return yaml_json(value)
    values.append(value)
    return _PLACEHOLDER.format(len(values) - 1)


_ENV.filters["tojson"] = _tojson


class _PlaceholderNotWholeError(Exception):
    """A placeholder is part of a longer scalar or a key: parse the plain way."""


def _yaml_float(literal: str) -> float | str:
    return float(literal) if _YAML_FLOAT.match(literal) else literal


def _decoded(value: Any) -> Any:
    """``value`` as YAML reads its tojson text: a fresh copy, numbers as YAML reads them."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return json.loads(text, parse_float=_yaml_float, parse_constant=str)


def _fill(node: Any, values: list[Any]) -> Any:
    if isinstance(node, str):
        if "__distillery_value_" not in node:
            return node
        whole = _WHOLE_PLACEHOLDER.fullmatch(node)
        if whole is None:
            raise _PlaceholderNotWholeError(node)
        return _decoded(values[int(whole.group(1))])
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if isinstance(key, str) and "__distillery_value_" in key:
                raise _PlaceholderNotWholeError(key)
            out[key] = _fill(value, values)
        return out
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    return node


def parse_rendered(text: str) -> dict[str, Any]:
    """A rendered document, parsed the plain way (YAML)."""
    obj = yaml.load(text, Loader=_YAML_LOADER)
    assert isinstance(obj, dict)
    return obj


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """``template`` rendered with ``context``: the YAML text, values and all."""
    return _ENV.get_template(template).render(**context)


def load_template(template: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """One object: ``template`` rendered with ``context`` and parsed (see the module
    docstring for how)."""
    values: list[Any] = []
    layout_text = _ENV.get_template(template).render(**context, **{_VALUES: values})
    layout = _layouts.get(layout_text)
    if layout is None:
        layout = yaml.load(layout_text, Loader=_YAML_LOADER)
        if len(_layouts) >= _LAYOUTS_KEPT:
            _layouts.clear()
        _layouts[layout_text] = layout
    try:
        obj = _fill(layout, values)
    except _PlaceholderNotWholeError:
        return parse_rendered(render_text(template, context))
    assert isinstance(obj, dict)
    return obj
