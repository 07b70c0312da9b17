"""What an editor sees before an edition goes out: the message as a new reader (or a given
subscriber) would get it now, written as HTML, text and screenshots, or sent as a test.

Nothing here counts or changes anything: links go straight to the stories (no click is
recorded), there is no open pixel, and the reader's own links (unsubscribe, preferences, view
in browser) lead nowhere, so an editor clicking around a preview cannot unsubscribe anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.ledger import readers
from digest.mail import compose, open_sender
from digest.models import Edition, Link, Subscriber, Subscription
from digest.render import Frame, RenderedMessage, render_layout
from digest.screenshots import DESKTOP, MOBILE, screenshot
from digest.selection import Limits, Reader, personalise, story_ids
from digest.subscriptions import normalise_email

INERT = "#preview"


class PreviewError(LookupError):
    """The preview cannot be made as asked; the message says why."""


def _reader(session: Session, edition: Edition, email: str | None) -> Reader:
    """A new reader, or the subscriber as the ledger knows them now."""
    if email is None:
        return Reader()
    subscriber = session.scalars(
        select(Subscriber).where(Subscriber.email == normalise_email(email))
    ).first()
    subscription = (
        None
        if subscriber is None
        else session.scalars(
            select(Subscription).where(
                Subscription.subscriber_id == subscriber.id,
                Subscription.newsletter_id == edition.newsletter_id,
            )
        ).first()
    )
    if subscriber is None or subscription is None:
        raise PreviewError(f"{email} does not subscribe to {edition.newsletter.slug}")
    return readers(session, edition, {subscriber.id: subscription.sections})[subscriber.id]


def render_preview(session: Session, edition: Edition, email: str | None = None) -> RenderedMessage:
    """The message as the reader would get it if it were sent now (PreviewError when the
    subscriber is unknown or has nothing new in it)."""
    blocks = personalise(
        edition.content["blocks"], _reader(session, edition, email), Limits.of(edition.newsletter)
    )
    if not story_ids(blocks):
        raise PreviewError(f"{email} has received every story of this edition already")
    links = dict(
        session.execute(select(Link.id, Link.url).where(Link.edition_id == edition.id)).all()
    )
    layout = render_layout(Frame.of(edition), blocks, tracked=False)
    return layout.fill(lambda slot: links[int(slot[5:])] if slot.startswith("link_") else INERT)


@dataclass(frozen=True)
class PreviewFiles:
    html: Path
    text: Path
    screenshots: list[Path]


def write_preview(
    message: RenderedMessage,
    directory: Path,
    stem: str,
    *,
    screenshots: bool,
    browser: str | None = None,
) -> PreviewFiles:
    """Write ``stem``.html and .txt into ``directory``, and with ``screenshots`` a PNG at
    desktop and at mobile width (headless Chromium; ScreenshotError if it cannot run)."""
    directory.mkdir(parents=True, exist_ok=True)
    html, text = directory / f"{stem}.html", directory / f"{stem}.txt"
    html.write_text(message.html, encoding="utf-8")
    text.write_text(message.text, encoding="utf-8")
    images = []
    if screenshots:
        for name, png in screenshot(message.html, [DESKTOP, MOBILE], browser=browser).items():
            path = directory / f"{stem}-{name}.png"
            path.write_bytes(png)
            images.append(path)
    return PreviewFiles(html, text, images)


def send_test(
    settings: Settings, edition: Edition, message: RenderedMessage, to: str, now: datetime
) -> None:
    """Send the preview to ``to`` as a test: marked in the subject, no delivery row, nothing
    counted (TransportError if the relay refuses)."""
    address = normalise_email(to)
    newsletter = edition.newsletter
    sender = newsletter.from_address or settings.from_address
    data = compose(
        sender=sender,
        recipient=address,
        subject=f"[Test] {message.subject}",
        text=message.text,
        html=message.html,
        message_id=f"<test.{edition.id}.{now.timestamp():.6f}@{settings.sender_domain}>",
        date=now,
    )
    key = f"test-{edition.id}-{now:%Y%m%d%H%M%S%f}"
    with open_sender(settings.smtp_url) as transport:
        transport.send(parseaddr(sender)[1], address, data, key, lambda: True)
