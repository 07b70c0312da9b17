"""Single messages to one reader outside an edition: the sign-up confirmation and the
re-engagement message of a sunset. They are sent at once through DIGEST_SMTP_URL, one message
per call, and carry no tracking: a confirmation must work for readers who block it, and its
clicks are not engagement with any edition.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr

from digest.config import Settings
from digest.mail import compose, open_sender
from digest.models import utcnow
from digest.render import environment


@dataclass(frozen=True)
class NoticeSender:
    """Who a notice is from: the newsletter's name and From address (None: DIGEST_FROM).
    Plain values, so a notice can go out after the request's session has closed."""

    name: str
    from_address: str | None


def send_notice(
    settings: Settings,
    newsletter: NoticeSender,
    recipient: str,
    kind: str,
    context: dict[str, object],
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """Render ``templates/email/<kind>.html`` and ``.txt`` and send them; the subject is the
    text template's first line. Raises a digest.mail TransportError when the relay refuses."""
    env = environment()
    context = {"newsletter_name": newsletter.name, **context}
    subject, _, text = env.get_template(f"email/{kind}.txt").render(context).partition("\n")
    html = env.get_template(f"email/{kind}.html").render(context)
    from_address = newsletter.from_address or settings.from_address
    sender = parseaddr(from_address)[1]
    domain = sender.rpartition("@")[2]
    key = f"{kind}-{secrets.token_hex(8)}"
    message = compose(
        sender=from_address,
        recipient=recipient,
        subject=subject.strip(),
        text=text.lstrip("\n"),
        html=html,
        message_id=f"<{key}@{domain}>",
        date=utcnow(),
        headers=[("Auto-Submitted", "auto-generated"), *headers],
    )
    with open_sender(settings.smtp_url) as transport:
        transport.send(sender, recipient, message, key, lambda: True)
