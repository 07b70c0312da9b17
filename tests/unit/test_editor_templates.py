"""Editor-written subject and intro: sandboxed, limited in time and size, errors with lines."""

from __future__ import annotations

import logging
import time
from datetime import date

import pytest

from digest.config import Settings
from digest.db import session_factory
from digest.editions import prepare_due_editions, prepare_edition
from digest.editor_templates import (
    EditorTemplateError,
    check_editor_template,
    render_editor_template,
    template_context,
)
from digest.models import Edition, Newsletter, utcnow
from tests.support import seed_sample_site

CONTEXT = template_context(
    "Example News Daily",
    date(2026, 11, 25),
    "fr",
    [{"title": "Un titre", "section": "Monde", "summary": "Résumé"}, {"title": "Deux"}],
)


def test_a_subject_uses_the_stories_and_the_localised_date() -> None:
    source = "{{ newsletter }} – {{ date_text }}: {{ top.title }} (+{{ count - 1 }})"
    assert (
        render_editor_template("subject", source, CONTEXT)
        == "Example News Daily – mercredi 25 novembre 2026: Un titre (+1)"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hello {{ top.title", "subject, line 1: unexpected end of template"),
        ("ok\n{{ top.nope }}", "subject, line 2: 'dict object' has no attribute 'nope'"),
        ("a\nb\n{{ 1 / 0 }}", "subject, line 3: division by zero"),
        ("{{ top.__class__.__mro__ }}", "subject, line 1: access to attribute '__class__'"),
        ("{{ stories.append(1) }}", "subject, line 1: access to attribute 'append'"),
        ("{{ 'x' * 100000 }}", "subject, line 1: a product of more than 10,000 items"),
        ("{{ 2 ** 100000 }}", "subject, line 1: a number of more than 1,000 digits"),
        (
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            "subject, line 1: the template took too long (over 0.5 s): make its loops shorter",
        ),
        (
            "{% for i in range(99999) %}0123456789{% endfor %}",
            "subject: the output is over 10,000 characters: shorten the text or the loops",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "subject, line 1: 'namespace' is undefined",
        ),
    ],
)
def test_errors_name_the_line_and_the_reason(source: str, message: str) -> None:
    with pytest.raises(EditorTemplateError) as caught:
        render_editor_template("subject", source, CONTEXT)
    assert str(caught.value).startswith(message)


def test_a_template_is_tried_when_it_is_saved() -> None:
    check_editor_template("intro", "Bonjour, {{ count }} articles.", "News", "fr")
    with pytest.raises(EditorTemplateError, match="intro, line 1"):
        check_editor_template("intro", "{{ stories[0].missing }}", "News", "fr")


def test_formats_filters_and_methods_work_within_the_limits() -> None:
    source = (
        "{{ '{:,}'.format(123456) }} {{ '%d|%5.1f' % (123456, 2.25) }} "
        "{{ '%s!'|format(top.title) }} [{{ 'ab'|center(6) }}] {{ 'x'.ljust(3, '.') }} "
        "{{ (top.title ~ ' ') * 2 }}{{ 'Un long titre'|truncate(9, leeway=0) }}"
    )
    assert (
        render_editor_template("intro", source, CONTEXT)
        == "123,456 123456|  2.2 Un titre! [  ab  ] x.. Un titre Un titre Un..."
    )


LOOP_FOREVER = "{% for i in range(99999) %}{% for j in range(99999) %}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # Under a trace hook, the time-out raised inside `is sequence` was swallowed, and
        # the hook with it; the alarm's exception cannot be swallowed.
        (
            "{#\n#}" + LOOP_FOREVER + "{% if j is sequence %}{% endif %}{% endfor %}{% endfor %}",
            "subject, line 2: the template took too long (over 0.5 s)",
        ),
        # Constant output was folded while compiling, outside any limit.
        ("{{ 'x'|center(1000000000) }}", "|center was given 1,000,000,000"),
        ("{% if 'x'|center(1000000000) %}{% endif %}", "|center was given 1,000,000,000"),
        ("{{ '%1000000000s' % 'x' }}", "a format width of 1000000000"),
        # One step in C that builds a huge value.
        ("{{ 'x'|center(10**9) }}", "|center was given 1,000,000,000"),
        ("{{ 'x'|indent(width=10**9, first=true) }}", "|indent was given 1,000,000,000"),
        ("{{ 'x'|wordwrap(10**9) }}", "|wordwrap was given 1,000,000,000"),
        ("{{ 'x'|truncate(10**9) }}", "|truncate was given 1,000,000,000"),
        ("{{ stories|tojson(indent=10**9) }}", "|tojson was given 1,000,000,000"),
        ("{{ stories|map('center', 10**9)|list }}", "|map was given 1,000,000,000"),
        ("{{ 'x'.ljust(10**9) }}", "ljust() was given 1,000,000,000"),
        ("{{ 'x'.encode().zfill(10**9) }}", "zfill() was given 1,000,000,000"),
        ("{{ '%*s' % (10**9, 'x') }}", "a %* width was given 1,000,000,000"),
        ("{{ '%.999999f' % 1.5 }}", "a format width of 999999"),
        ("{{ '%*s'|format(10**9, 'x') }}", "a %* width was given 1,000,000,000"),
        ("{{ '%999999999s'|format('x') }}", "a format width of 999999999"),
        ("{{ '{:>999999999}'.format(1) }}", "a format width of 999999999"),
        ("{{ '{:>{}}'.format(1, 10**9) }}", "a format width of 1000000000"),
        ("{{ '{a:>{b}}'.format_map({'a': 1, 'b': 10**9}) }}", "a format width of 1000000000"),
        ("{{ [0] * 10**9 }}", "a product of more than 10,000 items"),
        ("{{ 'x' * 10**9 }}", "a product of more than 10,000 items"),
        ("{{ 'x'.encode() * 10**9 }}", "a product of more than 10,000 items"),
        ("{{ (((10**100)**100)**100)**100 }}", "a number of more than 1,000 digits"),
        ("{% set n = 10**900 %}{{ n * n }}", "a number of more than 1,000 digits"),
        # What passes every check runs into the memory cap (one string of 100 MB, then one of
        # 300 MB, refused at once, so that a busy machine cannot turn this into the deadline)...
        (
            "{% set row = 'x' * 10000 %}{% set text = [row] * 10000 %}"
            "{{ ([text|join] * 3)|join|length }}",
            "the template needs too much memory: build shorter strings and lists",
        ),
        # ...or the deadline: a single step in C that the alarm cannot interrupt.
        (
            "{{ ([[0] * 100] * 10000)|sum(start=[])|length }}",
            "subject: the template took too long (over 0.5 s): make its loops shorter",
        ),
        ("x" * 5001, "subject: the template is 5,001 characters long, over the 5,000 allowed"),
    ],
)
def test_limits_hold_against_templates_written_to_defeat_them(source: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(EditorTemplateError) as caught:
        render_editor_template("subject", source, CONTEXT)
    assert time.monotonic() - started < 2
    assert message in str(caught.value)
    assert str(caught.value).startswith("subject")


def test_a_worker_stopped_at_the_deadline_is_replaced() -> None:
    with pytest.raises(EditorTemplateError, match="took too long"):
        render_editor_template("subject", "{{ ([[0] * 100] * 10000)|sum(start=[]) }}", CONTEXT)
    assert render_editor_template("subject", "{{ count }} stories", CONTEXT) == "2 stories"


def test_a_template_is_refused_when_it_is_saved() -> None:
    with pytest.raises(EditorTemplateError, match=r"subject, line 1: \|center was given"):
        check_editor_template("subject", "{{ top.title|center(10**9) }}", "News", "fr")


def test_an_edition_takes_its_subject_and_intro_from_the_templates(
    sqlite_settings: Settings,
) -> None:
    newsletter_id = seed_sample_site(sqlite_settings, 2)
    with session_factory(sqlite_settings.database_url)() as session:
        newsletter = session.get_one(Newsletter, newsletter_id)
        newsletter.subject_template = "{{ newsletter }}:\n{{ top.title }}"
        newsletter.intro_template = "{{ '{}:{:>4}'.format('Top', top.title|upper) }}"
        now = utcnow()
        edition = prepare_edition(session, newsletter, now.date(), now)
        top = edition.content["blocks"][0]["items"][0]["title"]
        assert edition.subject == f"{newsletter.name}: {top}"
    assert edition.intro == f"Top:{top.upper():>4}"


def test_a_template_that_runs_too_long_stops_only_its_edition(
    sqlite_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    newsletter_id = seed_sample_site(sqlite_settings, 2)
    with session_factory(sqlite_settings.database_url)() as session:
        newsletter = session.get_one(Newsletter, newsletter_id)
        newsletter.send_hour_utc = 0
        newsletter.intro_template = "{{ ([[0] * 100] * 10000)|sum(start=[]) }}"
        session.commit()
        with caplog.at_level(logging.ERROR, logger="digest.editions"):
            assert prepare_due_editions(session, utcnow()) == []
        assert session.query(Edition).count() == 0
    assert "intro: the template took too long (over 0.5 s)" in caplog.text
