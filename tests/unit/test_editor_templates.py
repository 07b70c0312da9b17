"""Editor-written subject and intro: sandboxed, limited in time and size, errors with lines."""

from __future__ import annotations

from datetime import date

import pytest

from digest.editor_templates import (
    EditorTemplateError,
    check_editor_template,
    render_editor_template,
    template_context,
)

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
        ("{{ 2 ** 100000 }}", "subject, line 1: an exponent over 100"),
        (
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            "subject, line 1: took longer than 0.5 s",
        ),
        ("{% for i in range(99999) %}0123456789{% endfor %}", "subject: output longer than"),
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


def test_the_trace_hook_is_taken_off_after_a_render() -> None:
    import sys

    before = sys.gettrace()
    with pytest.raises(EditorTemplateError):
        render_editor_template("subject", "{{ 1/0 }}", CONTEXT)
    render_editor_template("subject", "fine", CONTEXT)
    assert sys.gettrace() is before
