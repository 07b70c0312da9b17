"""Editor-written subject and intro templates, run in Jinja's sandbox with limits.

Editors are trusted to write a subject line, not to run code on our workers: the sandbox
refuses attribute access to internals, and on top of it a render is stopped after
``TIME_LIMIT`` seconds (a trace hook watches the template's own lines, which is where any
loop runs) or once its output passes ``SIZE_LIMIT`` characters, and neither ``*`` nor ``+``
builds huge strings or lists (``~`` joins only what fits in the output anyway). Errors
name the template and line, so the editor can fix them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from datetime import date
from types import FrameType
from typing import Any

from babel.dates import format_date
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TIME_LIMIT = 0.5
SIZE_LIMIT = 10_000
# The longest string or list ``*`` may make.
PRODUCT_LIMIT = 10_000


class EditorTemplateError(ValueError):
    """The template cannot be used; the message says which line and why."""


class _LimitExceeded(Exception):
    """Internal: a limit stopped the render (reported as EditorTemplateError)."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Immutable: no ``list.append`` or ``dict.update`` to grow data in a loop."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 100:
            raise _LimitExceeded("an exponent over 100")
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(times, int)
                and len(sequence) * times > PRODUCT_LIMIT
            ):
                raise _LimitExceeded(f"a product of more than {PRODUCT_LIMIT:,} items")
        if (
            operator == "+"
            and isinstance(left, str | list | tuple)
            and isinstance(right, str | list | tuple)
            and len(left) + len(right) > PRODUCT_LIMIT
        ):
            raise _LimitExceeded(f"a sum of more than {PRODUCT_LIMIT:,} items")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(autoescape=False, undefined=StrictUndefined)
# A namespace is the one mutable object templates can make; nothing here needs one, and with
# it a loop could double a string on every pass.
del _ENV.globals["namespace"]


def _line(exc: BaseException) -> int | None:
    """The template line an error happened on: Jinja rewrites tracebacks so the template's
    own frames carry the template's line numbers."""
    line = getattr(exc, "lineno", None)
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _error(name: str, exc: BaseException) -> EditorTemplateError:
    line = _line(exc)
    where = f"{name}, line {line}" if line else name
    message = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
    return EditorTemplateError(f"{where}: {message}")


def render_editor_template(name: str, source: str, context: Mapping[str, Any]) -> str:
    """Render ``source`` (called ``name`` in errors) with ``context``; one line of text out
    for a subject, any text for an intro. Raises EditorTemplateError."""
    try:
        template = _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise _error(name, exc) from None
    deadline = time.monotonic() + TIME_LIMIT

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _LimitExceeded(f"took longer than {TIME_LIMIT} s")
        return tracer

    parts: list[str] = []
    size = 0
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > SIZE_LIMIT:
                raise _LimitExceeded(f"output longer than {SIZE_LIMIT:,} characters")
            parts.append(chunk)
    except _LimitExceeded as exc:
        raise _error(name, exc) from None
    except Exception as exc:  # any error of the editor's template is theirs to fix
        raise _error(name, exc) from None
    finally:
        sys.settrace(previous)
    return "".join(parts).strip()


def template_context(
    newsletter_name: str, issue_date: date, locale: str, stories: list[Mapping[str, Any]]
) -> dict[str, Any]:
    """What an editor's template can use: the newsletter's name, the issue's date (also as
    text in the newsletter's locale), the stories in the order a new reader gets them (each
    with title, section and summary), the first of them as ``top``, and their ``count``."""
    shown = [
        {"title": s["title"], "section": s.get("section", ""), "summary": s.get("summary", "")}
        for s in stories
    ]
    return {
        "newsletter": newsletter_name,
        "date": issue_date,
        "date_text": format_date(issue_date, format="full", locale=locale),
        "top": shown[0] if shown else {"title": "", "section": "", "summary": ""},
        "stories": shown,
        "count": len(shown),
    }


def check_editor_template(name: str, source: str, newsletter_name: str, locale: str) -> None:
    """Try ``source`` with made-up stories when it is saved, so that a mistake shows then
    rather than when an edition is prepared. Raises EditorTemplateError."""
    stories = [
        {"title": "Top story", "section": "World", "summary": "A summary."},
        {"title": "Second story", "section": "Politics", "summary": ""},
    ]
    render_editor_template(
        name, source, template_context(newsletter_name, date(2026, 1, 1), locale, stories)
    )
