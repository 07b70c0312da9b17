"""An edition in flight: its status (progress, rate, ETA), pause, resume and cancel.

The status is derived from the delivery rows every time (DESIGN: the edition's state comes
from its delivery counts, so there is nothing stored to drift). Pause and cancel take effect
before the next batch is claimed: a batch already in flight finishes, because stopping it
halfway would only turn its message inside the SMTP exchange into an ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from digest.editions import HELD, load_edition
from digest.models import FINAL_DELIVERY_STATES, Delivery, DeliveryState, Edition
from digest.sending import delivery_counts, pause_edition

RATE_WINDOW = timedelta(minutes=1)


class EditionStateError(ValueError):
    """The edition is not in a state that allows this; the message says which and why."""


@dataclass(frozen=True)
class EditionStatus:
    edition_id: int
    subject: str
    # preparing is not a state here: an edition exists only once its deliveries are written.
    # held | scheduled (every row left waits for its reader's local hour) | sending | paused |
    # sent | cancelled
    state: str
    total: int
    done: int
    counts: dict[str, int]
    rate_per_second: float
    eta_seconds: float | None
    # Queued for a local send hour that has not come yet (digest.local_time), and the next one.
    waiting: int
    next_local_send_at: datetime | None
    paused_at: datetime | None
    pause_reason: str | None
    cancelled_at: datetime | None

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 1.0


def edition_status(session: Session, edition_id: int, now: datetime) -> EditionStatus:
    edition = load_edition(session, edition_id)
    counts = delivery_counts(session, edition_id)
    total = sum(counts.values())
    done = sum(counts[s] for s in FINAL_DELIVERY_STATES)
    sent_recently = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.sent_at >= now - RATE_WINDOW)
    )
    rate = (sent_recently or 0) / RATE_WINDOW.total_seconds()
    remaining = total - done
    waiting, next_at = session.execute(
        select(func.count(), func.min(Delivery.not_before)).where(
            Delivery.edition_id == edition_id,
            Delivery.state == DeliveryState.QUEUED,
            Delivery.not_before > now,
        )
    ).one()
    if edition.cancelled_at is not None:
        state = "cancelled"
    elif remaining == 0:
        state = "sent"
    elif edition.paused_at is not None:
        state = "held" if edition.pause_reason == HELD else "paused"
    elif waiting == remaining:
        state = "scheduled"
    else:
        state = "sending"
    return EditionStatus(
        edition_id=edition.id,
        subject=edition.subject,
        state=state,
        total=total,
        done=done,
        counts={s.value: n for s, n in counts.items()},
        rate_per_second=rate,
        # For what may go now; the rows waiting for their local hour go at that hour.
        eta_seconds=(remaining - waiting) / rate if state == "sending" and rate > 0 else None,
        waiting=waiting,
        next_local_send_at=next_at,
        paused_at=edition.paused_at,
        pause_reason=edition.pause_reason,
        cancelled_at=edition.cancelled_at,
    )


def _open_edition(session: Session, edition_id: int, action: str) -> Edition:
    """The edition, if it is still being sent (or paused); else a clear refusal."""
    edition = load_edition(session, edition_id)
    if edition.cancelled_at is not None:
        raise EditionStateError(f"edition {edition_id} was cancelled: it cannot be {action}")
    unfinished = session.scalar(
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.state.not_in(FINAL_DELIVERY_STATES))
        .limit(1)
    )
    if unfinished is None:
        raise EditionStateError(
            f"edition {edition_id} is finished (every delivery is final): it cannot be {action}"
        )
    return edition


def pause(session: Session, edition_id: int, now: datetime) -> EditionStatus:
    """No further batch is claimed until resume; pausing a paused edition changes nothing."""
    _open_edition(session, edition_id, "paused")
    pause_edition(session, edition_id, now, "paused by an editor")
    session.expire_all()
    return edition_status(session, edition_id, now)


def _release(session: Session, edition: Edition) -> None:
    if edition.paused_at is not None:
        edition.paused_at = None
        edition.pause_reason = None
        # Never dispatched, as far as the tick is concerned: it gets its full set of tasks.
        edition.dispatched_at = None
        session.commit()


def send(session: Session, edition_id: int, now: datetime) -> EditionStatus:
    """Send a held edition from the next beat tick; an edition already sending is left as it
    is. One paused for another reason is refused: resuming it is a separate decision."""
    edition = _open_edition(session, edition_id, "sent")
    if edition.paused_at is not None and edition.pause_reason != HELD:
        raise EditionStateError(
            f"edition {edition_id} is paused ({edition.pause_reason}): look into that, then"
            f" resume it with `digest editions resume {edition_id}`"
        )
    _release(session, edition)
    return edition_status(session, edition_id, now)


def resume(session: Session, edition_id: int, now: datetime) -> EditionStatus:
    """Sending continues from the next beat tick, one task per batch left."""
    _release(session, _open_edition(session, edition_id, "resumed"))
    return edition_status(session, edition_id, now)


def cancel(session: Session, edition_id: int, now: datetime) -> EditionStatus:
    """Every delivery not yet handed to the relay becomes ``cancelled``; what is sent stays
    sent. A row a worker has claimed but not begun is cancelled too: the worker checks before
    each message (digest.sending._begin_statement)."""
    edition = load_edition(session, edition_id)
    if edition.cancelled_at is None:
        _open_edition(session, edition_id, "cancelled")
        session.execute(
            update(Delivery)
            .where(
                Delivery.edition_id == edition_id,
                Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
            )
            .values(state=DeliveryState.CANCELLED, lease_until=None, next_attempt_at=None)
            .execution_options(synchronize_session=False)
        )
        edition.cancelled_at = now
        edition.paused_at = edition.pause_reason = None
        session.commit()
    return edition_status(session, edition_id, now)
