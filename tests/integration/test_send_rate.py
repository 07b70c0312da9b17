"""The global send rate: one token bucket in the database holds every worker to it together."""

from __future__ import annotations

import threading

import pytest

from digest.config import ConfigError, load_settings
from digest.db import session_factory
from digest.rate_limit import SendRateLimit
from tests.support import prepare_sample_edition, send_until_done

RATE = 10.0
MESSAGES = 30


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
@pytest.mark.parametrize(
    "setting",
    [("DIGEST_SEND_RATE", str(RATE)), ("DIGEST_DOMAIN_RATES", f"gmail.com=1, example.org={RATE}")],
    ids=["global rate", "rate for the recipients' domain"],
)
def test_concurrent_workers_keep_to_the_rate_together(
    request, env, smtp_sink, database, setting
) -> None:
    if database == "postgres":
        env["DIGEST_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_BATCH_SIZE="5")
    env[setting[0]] = setting[1]
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, MESSAGES)
    senders = [
        threading.Thread(target=send_until_done, args=(settings, edition.id)) for _ in range(3)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)

    arrivals = sorted(m.received_at for m in smtp_sink.messages)
    assert len(arrivals) == MESSAGES
    start = arrivals[0]
    # The bucket starts full (one second's worth, 10) and refills at 10 a second: message n
    # cannot arrive before (n - 10) / 10 s after the first, whichever worker sent it.
    for n, arrived in enumerate(arrivals):
        assert arrived - start >= (n - RATE) / RATE - 0.05, (n, arrived - start)
    # And the rate is a limit, not a stall: the last one is not much later than it must be.
    assert arrivals[-1] - start < (MESSAGES - RATE) / RATE + 2


def test_without_a_rate_for_their_domain_the_same_send_is_not_held_back(env, smtp_sink) -> None:
    # The test above could not fail if the sink were this slow anyway; and a limit on another
    # domain holds nobody here back.
    env.update(
        DIGEST_SMTP_URL=smtp_sink.url, DIGEST_BATCH_SIZE="5", DIGEST_DOMAIN_RATES="gmail.com=1"
    )
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, MESSAGES)
    send_until_done(settings, edition.id)
    arrivals = sorted(m.received_at for m in smtp_sink.messages)
    assert arrivals[-1] - arrivals[0] < (MESSAGES - RATE) / RATE / 2


def test_the_bucket_queues_takers_in_order(sqlite_settings) -> None:
    now = [1000.0]
    limit = SendRateLimit(session_factory(sqlite_settings.database_url), 2.0, clock=lambda: now[0])
    waits = [limit.take() for _ in range(5)]
    # Two tokens in the bucket (one second's worth), then a queue at half a second apiece.
    assert waits == pytest.approx([0, 0, 0.5, 1.0, 1.5])
    now[0] += 10  # a long idle spell refills to the burst, not beyond
    assert [limit.take() for _ in range(3)] == pytest.approx([0, 0, 0.5])


def test_a_rate_that_would_outlast_the_lease_is_refused(env) -> None:
    env.update(DIGEST_SEND_RATE="0.2", DIGEST_BATCH_SIZE="100")
    with pytest.raises(ConfigError, match="lower the batch size to at most 48"):
        load_settings(env)


@pytest.mark.parametrize("raw", ["gmail.com", "gmail.com=0", "gmail.com=fast", "=5", "a=1,b=-2"])
def test_bad_domain_rates_are_an_error_showing_the_form(env, raw) -> None:
    env["DIGEST_DOMAIN_RATES"] = raw
    with pytest.raises(ConfigError, match="is not DOMAIN=RATE"):
        load_settings(env)


def test_domain_rates_are_case_insensitive(env) -> None:
    env["DIGEST_DOMAIN_RATES"] = " GMail.com=20 ,yahoo.com=2.5,"
    assert load_settings(env).domain_rates == {"gmail.com": 20.0, "yahoo.com": 2.5}
