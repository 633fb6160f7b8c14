"""User pod-template overrides, rendered in a sandbox.

``spec.serving.templateRef`` names a ConfigMap key holding a Jinja2 template that
renders a YAML *patch* for the pod template (``metadata`` and ``spec``), merged over
what distillery rendered: maps merge key by key, lists of named items (containers,
volumes, env, volumeMounts, ports, imagePullSecrets) merge by ``name``, tolerations and
topology spread constraints are added to, other lists are replaced.

The template is untrusted input from anyone who can write a ConfigMap, so:

- it runs in Jinja2's immutable sandbox with strict undefined variables and no loader
  (``include``/``import``/``extends`` cannot reach files);
- ``*`` and ``**`` are intercepted so ``'x' * 10**9`` cannot exhaust memory, and
  ``range`` is capped by the sandbox;
- a line budget, enforced by a trace function on the template's own frames, stops
  nested loops that would otherwise run for hours;
- source and output sizes are capped.

Any failure is a :class:`UserTemplateError` with a message for the DMD's ``Stalled``
condition; the caller then applies nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SOURCE_BYTES = 64 * 1024
MAX_OUTPUT_BYTES = 256 * 1024
MAX_TEMPLATE_LINES = 200_000
MAX_SEQUENCE_PRODUCT = 10_000
TEMPLATE_FILENAME = "<distillery-user-template>"


class UserTemplateError(ValueError):
    """The user template cannot be used; the message says why."""


class _BudgetExceededError(Exception):
    pass


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise UserTemplateError("exponent too large in user template")
            return left**right
        if operator == "*":
            sized = (str, bytes, list, tuple)
            if isinstance(left, sized) or isinstance(right, sized):
                seq, n = (left, right) if isinstance(left, sized) else (right, left)
                if isinstance(n, int) and len(seq) * n > MAX_SEQUENCE_PRODUCT:
                    raise UserTemplateError("repetition too large in user template")
            return left * right
        return super().call_binop(context, operator, left, right)


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, loader=None)
    return env


def _tracer(limit: int) -> Callable[[FrameType, str, Any], Any]:
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != TEMPLATE_FILENAME:
            return None
        if event == "line":
            count += 1
            if count > limit:
                raise _BudgetExceededError
        return trace

    return trace


def render_user_template(source: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render the template and parse the YAML patch it produces."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise UserTemplateError(f"user template is larger than {MAX_SOURCE_BYTES} bytes")
    env = _environment()
    try:
        parsed = env.parse(source)
        for node in parsed.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            raise UserTemplateError(
                f"user template line {node.lineno}: include/import/extends are not allowed"
            )
        code = env.compile(parsed, filename=TEMPLATE_FILENAME)
        template = env.template_class.from_code(env, code, env.make_globals(None))
    except TemplateError as exc:
        raise UserTemplateError(f"user template does not compile: {exc}") from exc
    previous = sys.gettrace()
    sys.settrace(_tracer(MAX_TEMPLATE_LINES))
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > MAX_OUTPUT_BYTES:
                raise UserTemplateError(f"user template output exceeds {MAX_OUTPUT_BYTES} bytes")
            chunks.append(chunk)
    except _BudgetExceededError:
        raise UserTemplateError(
            f"user template ran more than {MAX_TEMPLATE_LINES} steps: simplify its loops"
        ) from None
    except UserTemplateError:
        raise
    except TemplateError as exc:
        raise UserTemplateError(f"user template failed: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, OverflowError) as exc:
        raise UserTemplateError(f"user template failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous)
    text = "".join(chunks)
    try:
        patch = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserTemplateError(f"user template did not render valid YAML: {exc}") from None
    if patch is None:
        return {}
    if not isinstance(patch, dict) or not set(patch) <= {"metadata", "spec"}:
        raise UserTemplateError(
            "user template must render a mapping with only 'metadata' and/or 'spec' "
            "(a pod template patch)"
        )
    return patch


NAMED_LISTS = frozenset(
    {"containers", "initContainers", "volumes", "env", "volumeMounts", "ports", "imagePullSecrets"}
)
# Lists whose items have no name, where a template adds and never takes away: a
# toleration for a reserved pool must not drop the GPU taint's toleration distillery set.
UNION_LISTS = frozenset({"tolerations", "topologySpreadConstraints"})


def merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Merge ``patch`` over ``base`` (see module docstring); neither is modified."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if (
        key in NAMED_LISTS
        and isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        merged = {i["name"]: i for i in base}
        order = [i["name"] for i in base]
        for item in patch:
            if item["name"] in merged:
                merged[item["name"]] = merge(merged[item["name"]], item)
            else:
                merged[item["name"]] = item
                order.append(item["name"])
        return [merged[n] for n in order]
    if key in UNION_LISTS and isinstance(base, list) and isinstance(patch, list):
        return base + [item for item in patch if item not in base]
    return patch
