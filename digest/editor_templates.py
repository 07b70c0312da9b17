"""Editor-written subject and intro templates, run in Jinja's sandbox with limits.

Editors are trusted to write a subject line, not to run code on our workers or to stall them.
The sandbox refuses attribute access to internals; the limits below hold even against
templates written to defeat them:

- A render happens in a worker process (a new interpreter, so it shares no locks or
  threads with the caller) whose address space is capped at ``MEMORY_LIMIT`` and whose CPU time is
  capped by the kernel. A worker is reused for the next render, so a render costs a round
  trip between processes, not a process start.
- In the worker, an alarm stops the render after ``TIME_LIMIT`` seconds, naming the line.
  Its exception is not an ``Exception``, so template code that catches errors (Jinja's
  ``is sequence`` test does) cannot swallow it and run on. A single step in C (a huge
  ``sum``) never lets the alarm in: the caller kills the worker half a second later and
  the next render starts a new one.
- Nothing is evaluated while compiling: the optimizer is off, and the operators and filters
  that could build big values are checked before they run, which also keeps Jinja's own
  folding of constant output from running them at compile time.
- Widths and counts are checked before a step builds a string, rather than after: ``*``
  and ``+`` build at most ``PRODUCT_LIMIT`` items, numbers from ``*`` and ``**`` stay short,
  filters and string methods get no width or count over ``SIZE_LIMIT``, and neither ``%``,
  ``|format`` nor ``str.format`` pads to more than that. The output stops at ``SIZE_LIMIT``
  characters too; whatever else a template builds runs into the memory cap.

Errors name the template and, where known, the line, and say what to change.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from babel.dates import format_date
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter

TIME_LIMIT = 0.5
SIZE_LIMIT = 10_000
# The longest template source; subjects and intros are a few lines.
SOURCE_LIMIT = 5_000
# The longest string or list ``*`` or ``+`` may make.
PRODUCT_LIMIT = 10_000
# The worker's address space: its baseline is about 30 MiB, so a template can use most of it.
MEMORY_LIMIT = 256 * 1024 * 1024

# Numbers past this many digits cost real time to multiply and cannot be shown anyway.
_DIGITS_LIMIT = 1_000
_NUMBER_BITS = math.ceil(_DIGITS_LIMIT * math.log2(10))
# The worker's alarm ends a render at TIME_LIMIT; a worker stuck in one long step in C is
# killed this much later.
_KILL_GRACE = 0.5
# CPU seconds per render the kernel allows: a backstop for a worker nobody is waiting for.
_CPU_SECONDS = 2
# Starting a worker (a new interpreter importing Jinja) takes ~0.1 s; on a loaded machine
# it can take far longer, and that is no fault of the template.
_START_TIMEOUT = 30.0
# Idle workers kept per process; more are started when renders run at the same time.
_IDLE_LIMIT = 2
# Error messages are cut to this many characters: they can quote template data.
_MESSAGE_LIMIT = 500
# A reply is JSON with \u escapes: at most 12 bytes per character of output.
_REPLY_LIMIT = 12 * SIZE_LIMIT + 1024
_READY = b"ready"

_TOO_LONG = f"the template took too long (over {TIME_LIMIT} s): make its loops shorter"
_TOO_BIG = "the template needs too much memory: build shorter strings and lists"
_CRASHED = "the template stopped its renderer (too much memory or time): simplify it"

# What ``*`` and ``+`` are checked on.
_SEQUENCES = (str, bytes, list, tuple)
# A percent-format conversion's width and precision ("%*s", "%-20.5f"); "%%" is text.
_PRINTF = re.compile(r"%%|%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class EditorTemplateError(ValueError):
    """The template cannot be used; the message says which line and why."""


class _LimitExceeded(Exception):
    """Internal: a check refused a step (reported as EditorTemplateError)."""


class _OutOfTime(BaseException):
    """Internal: the worker's alarm. Not an Exception, so that template code which catches
    errors cannot swallow it."""


def _check_count(what: str, value: Any) -> None:
    if isinstance(value, int) and value > SIZE_LIMIT:
        raise _LimitExceeded(
            f"{what} was given {value:,}; a width or count can be at most {SIZE_LIMIT:,}"
        )


def _check_counts(what: str, values: Iterable[Any]) -> None:
    for value in values:
        _check_count(what, value)


def _check_width(digits: str) -> None:
    # More than nine digits is over the limit whatever they say, and converting thousands
    # of them would fail with Python's own, confusing message.
    if len(digits) > 9 or int(digits) > SIZE_LIMIT:
        raise _LimitExceeded(
            f"a format width of {digits}; a width or count can be at most {SIZE_LIMIT:,}"
        )


def _check_printf(text: str, values: Any) -> None:
    """Refuse ``text % values`` (or ``text|format(values)``) if it would pad past the limit."""
    starred = False
    for match in _PRINTF.finditer(text):
        for number in match.groups():
            if number == "*":
                starred = True
            elif number:
                _check_width(number)
    if starred:
        # "*" takes its width from the values.
        _check_counts("a %* width", values if isinstance(values, tuple) else (values,))


class _WidthCheck(SandboxedFormatter):
    """Goes through a ``str.format`` call the sandboxed way, checking each field's spec
    before the field is formatted. Nested fields ("{:>{}}") are formatted into their
    field's spec first, so the check sees the final width."""

    def format_field(self, value: Any, format_spec: str) -> str:
        for digits in re.findall(r"\d+", format_spec):
            _check_width(digits)
        return super().format_field(value, format_spec)


def _capped_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` refusing any width or count over SIZE_LIMIT: such an argument can only
    make output that is refused after it was built."""
    # The filtered value itself is not a width; filters marked with pass_environment (or
    # context) get that first.
    skip = 2 if hasattr(function, "jinja_pass_arg") else 1

    @functools.wraps(function)
    def capped(*args: Any, **kwargs: Any) -> Any:
        _check_counts(f"|{name}", (*args[skip:], *kwargs.values()))
        return function(*args, **kwargs)

    return capped


def _checked_format(function: Callable[..., Any]) -> Callable[..., Any]:
    """The ``format`` filter, whose arguments are values to show rather than widths, with
    the widths in its format string checked instead."""

    @functools.wraps(function)
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(str(value), kwargs or args)
        return function(value, *args, **kwargs)

    return checked


class _Sandbox(ImmutableSandboxedEnvironment):
    """Immutable: no ``list.append`` or ``dict.update`` to grow data in a loop."""

    # Intercepted operators are also never folded at compile time.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        # Not optimized: the optimizer evaluates constant expressions while compiling.
        super().__init__(autoescape=False, undefined=StrictUndefined, optimized=False)
        # A namespace is the one mutable object templates can make; nothing here needs one,
        # and with it a loop could double a string on every pass.
        del self.globals["namespace"]
        self.filters = {
            name: _checked_format(function) if name == "format" else _capped_filter(name, function)
            for name, function in self.filters.items()
        }

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        numbers = isinstance(left, int) and isinstance(right, int)
        if operator == "*" and numbers and left.bit_length() + right.bit_length() > _NUMBER_BITS:
            raise _LimitExceeded(f"a number of more than {_DIGITS_LIMIT:,} digits")
        if operator == "**" and numbers and left.bit_length() * max(right, 0) > _NUMBER_BITS:
            raise _LimitExceeded(f"a number of more than {_DIGITS_LIMIT:,} digits")
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(sequence, _SEQUENCES)
                and isinstance(times, int)
                and len(sequence) * times > PRODUCT_LIMIT
            ):
                raise _LimitExceeded(f"a product of more than {PRODUCT_LIMIT:,} items")
        if (
            operator == "+"
            and isinstance(left, _SEQUENCES)
            and isinstance(right, _SEQUENCES)
            and len(left) + len(right) > PRODUCT_LIMIT
        ):
            raise _LimitExceeded(f"a sum of more than {PRODUCT_LIMIT:,} items")
        if operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        # str.center, ljust, zfill, expandtabs...: a huge width is one step in C.
        if isinstance(getattr(obj, "__self__", None), str | bytes):
            _check_counts(f"{obj.__name__}()", (*args, *kwargs.values()))
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        # The check formats as it goes, and its result is dropped: Jinja's own call then
        # formats (escaping for Markup). Editors' format calls are short; twice is cheap.
        text: str = value.__self__
        check = _WidthCheck(self)

        @functools.wraps(value)
        def checked(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format":
                check.vformat(text, args, kwargs)
            elif len(args) == 1 and not kwargs:  # format_map; Jinja reports other calls
                check.vformat(text, (), args[0])
            return sandboxed(*args, **kwargs)

        return checked


_ENV = _Sandbox()


def _code_line(traceback: TracebackType) -> int | None:
    """The traceback entry's line; for an instruction with no line of its own (the jump
    back at the end of a loop, where the alarm often lands), the line before it."""
    if traceback.tb_lineno is not None:
        return traceback.tb_lineno
    line = None
    for start, _, number in traceback.tb_frame.f_code.co_lines():
        if start > traceback.tb_lasti:
            break
        line = number or line
    return line


def _line(exc: BaseException, template: Template | None) -> int | None:
    """The template line an error happened on. Jinja rewrites the traceback of the errors
    it handles so that the template's frames carry the template's line numbers; the alarm
    is not one of those, so its line in the compiled code is mapped back."""
    line = getattr(exc, "lineno", None)
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = _code_line(traceback)
        traceback = traceback.tb_next
    if isinstance(exc, _OutOfTime) and template is not None and line is not None:
        return template.get_corresponding_lineno(line)
    return line


def _message(name: str, line: int | None, reason: str) -> str:
    where = f"{name}, line {line}" if line else name
    return f"{where}: {reason}"[:_MESSAGE_LIMIT]


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _OutOfTime


def _render(name: str, source: str, context: Mapping[str, Any]) -> dict[str, str]:
    """In the worker: compile and render ``source`` within TIME_LIMIT; the reply is the
    text or the error message."""
    template: Template | None = None
    try:
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
        try:
            template = _ENV.from_string(source)
            parts: list[str] = []
            size = 0
            for chunk in template.generate(context):
                size += len(chunk)
                if size > SIZE_LIMIT:
                    return {
                        "error": _message(
                            name,
                            None,
                            f"the output is over {SIZE_LIMIT:,} characters: "
                            "shorten the text or the loops that repeat it",
                        )
                    }
                parts.append(chunk)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _OutOfTime as exc:
        return {"error": _message(name, _line(exc, template), _TOO_LONG)}
    except MemoryError as exc:
        return {"error": _message(name, _line(exc, template), _TOO_BIG)}
    except Exception as exc:  # any error of the editor's template is theirs to fix
        reason = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
        return {"error": _message(name, _line(exc, template), reason)}
    return {"text": "".join(parts).strip()}


def _limit_cpu() -> None:
    """RLIMIT_CPU counts a process's whole life: allow what was used so far plus one
    render's share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + _CPU_SECONDS
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(descriptor: int) -> None:
    """The worker's main loop: render each (name, source, context) sent on the connection
    ``descriptor``, until the caller goes away."""
    connection = Connection(descriptor)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    # Soft and hard: a template cannot raise it again.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    # Ctrl-C in a terminal reaches the whole process group; the caller decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection.send_bytes(_READY)
    while True:
        try:
            name, source, context = connection.recv()
        except EOFError:
            return
        _limit_cpu()
        connection.send_bytes(json.dumps(_render(name, source, context)).encode())


# A new interpreter, not multiprocessing's spawn: that also imports the caller's __main__
# (measured with the CLI's and Celery's imports there: 960 ms instead of 60 ms to start,
# and 130 MiB of the worker's 256 instead of 28), and in any os.fork()ed child its exit
# handler kills the parent's workers. -P and the path make it import this very module.
_WORKER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from digest.editor_templates import _serve; _serve(int(sys.argv[2]))"
)
_ROOT = str(Path(__file__).resolve().parents[1])


class _Worker:
    """A process that renders templates one at a time; stopped when a render has to be."""

    def __init__(self) -> None:
        self.connection, theirs = Pipe()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-c", _WORKER, _ROOT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
            )
        try:
            ready = self.connection.poll(_START_TIMEOUT) and self.connection.recv_bytes()
        except (EOFError, OSError):
            ready = False
        if ready != _READY:
            self.stop()
            raise RuntimeError("the editor template worker did not start (see its stderr)")

    def render(self, job: tuple[str, str, dict[str, Any]]) -> dict[str, str] | None:
        """The worker's reply, or None if it ran past its deadline."""
        self.connection.send(job)
        if not self.connection.poll(TIME_LIMIT + _KILL_GRACE):
            return None
        reply: dict[str, str] = json.loads(self.connection.recv_bytes(_REPLY_LIMIT))
        return reply

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.connection.close()


class _Pool:
    """This process's idle workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def take(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.process.poll() is None:
                    return worker
                worker.stop()
        return _Worker()

    def give_back(self, worker: _Worker) -> None:
        with self.lock:
            if len(self.idle) < _IDLE_LIMIT:
                self.idle.append(worker)
                return
        worker.stop()


_pool = _Pool()


def _forget_workers() -> None:
    """In a forked child: the parent's workers are the parent's, and sharing one would
    cross the replies. Closing the child's copies of the pipes leaves the parent's alone."""
    global _pool
    for worker in _pool.idle:
        worker.connection.close()
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_workers)


def render_editor_template(name: str, source: str, context: Mapping[str, Any]) -> str:
    """Render ``source`` (called ``name`` in errors) with ``context``; one line of text out
    for a subject, any text for an intro. Raises EditorTemplateError."""
    if len(source) > SOURCE_LIMIT:
        raise EditorTemplateError(
            f"{name}: the template is {len(source):,} characters long, over the "
            f"{SOURCE_LIMIT:,} allowed: shorten it"
        )
    worker = _pool.take()
    try:
        reply = worker.render((name, source, dict(context)))
    except (EOFError, OSError):
        # It died mid-render: the kernel's CPU limit, or memory ran out where Python could
        # not raise MemoryError.
        worker.stop()
        raise EditorTemplateError(f"{name}: {_CRASHED}") from None
    except BaseException:
        # Interrupted while waiting: its state is unknown.
        worker.stop()
        raise
    if reply is None:
        worker.stop()
        raise EditorTemplateError(f"{name}: {_TOO_LONG}")
    _pool.give_back(worker)
    if "error" in reply:
        raise EditorTemplateError(reply["error"])
    return reply["text"]


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
