"""What the platform client tests share: the story card they post and how they look at a
failure or post the way the queue does."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from digest.social.platform import Client, LinkCard, Outcome, PlatformError, Post, Published

CARD = LinkCard(
    url="https://news.example/2026/11/budget-vote",
    title="Council passes the budget",
    description="A late-night vote ends a month of talks.",
)


def failure(call: Callable[[], object]) -> PlatformError:
    with pytest.raises(PlatformError) as info:
        call()
    return info.value


def post_once(client: Client, post: Post) -> Published:
    """What the queue does: after an unclear failure, read back before posting again."""
    try:
        return client.publish(post)
    except PlatformError as error:
        if error.outcome is not Outcome.UNCLEAR:
            raise
    return client.find_published(post) or client.publish(post)
