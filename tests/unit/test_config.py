"""Settings from the environment: the embedded defaults, the generated key, and bad values."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from digest.config import SECRET_KEY_FILE, ConfigError, load_settings, redact_url


@pytest.fixture
def base_env(data_dir: Path) -> dict[str, str]:
    """Only the data directory: every other setting takes its default."""
    return {"DIGEST_DATA_DIR": str(data_dir)}


def test_defaults_live_under_the_data_dir(base_env, data_dir):
    settings = load_settings(base_env)

    root = data_dir.resolve()
    assert settings.data_dir == root
    assert settings.database_url == f"sqlite:///{root / 'digest.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{root / 'broker.db'}"
    assert settings.smtp_url == f"file://{root / 'outbox'}"
    assert settings.base_url == "http://127.0.0.1:8000"
    assert settings.batch_size == 100
    assert settings.tick_seconds == 15


def test_data_dir_is_created(tmp_path):
    data_dir = tmp_path / "not" / "yet" / "there"

    settings = load_settings({"DIGEST_DATA_DIR": str(data_dir)})

    assert settings.data_dir == data_dir.resolve()
    assert data_dir.is_dir()


def test_base_url_loses_its_trailing_slash(base_env):
    base_env["DIGEST_BASE_URL"] = "https://digest.example.com/"

    assert load_settings(base_env).base_url == "https://digest.example.com"


def test_generated_secret_key_is_private_and_stable(base_env, data_dir):
    first = load_settings(base_env)
    key_file = data_dir / SECRET_KEY_FILE
    written = key_file.read_text()

    second = load_settings(base_env)

    assert len(first.secret_keys) == 1
    assert first.secret_keys[0]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert second.secret_keys == first.secret_keys
    assert key_file.read_text() == written


def test_configured_secret_keys_are_split_and_trimmed(base_env, data_dir):
    base_env["DIGEST_SECRET_KEYS"] = "new, old"

    assert load_settings(base_env).secret_keys == ("new", "old")
    # Configured keys replace the generated one; none is written.
    assert not (data_dir / SECRET_KEY_FILE).exists()


@pytest.mark.parametrize("content", ["", "\n", "   \n"])
def test_empty_secret_key_file_is_an_error_naming_it(base_env, data_dir, content):
    key_file = data_dir / SECRET_KEY_FILE
    key_file.write_text(content)

    with pytest.raises(ConfigError) as excinfo:
        load_settings(base_env)

    assert str(key_file.resolve()) in str(excinfo.value)


@pytest.mark.parametrize("value", ["Newsroom Digest", "", "Newsroom <>"])
def test_from_without_an_address_is_an_error(base_env, value):
    base_env["DIGEST_FROM"] = value

    with pytest.raises(ConfigError, match="DIGEST_FROM"):
        load_settings(base_env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGEST_BATCH_SIZE", "abc"),
        ("DIGEST_BATCH_SIZE", "0"),
        ("DIGEST_BATCH_SIZE", "-5"),
        # Would truncate to a batch of zero messages.
        ("DIGEST_BATCH_SIZE", "0.5"),
        ("DIGEST_BATCH_SIZE", "nan"),
        ("DIGEST_BATCH_SIZE", "inf"),
        ("DIGEST_TICK_SECONDS", "abc"),
        ("DIGEST_TICK_SECONDS", "0"),
        ("DIGEST_TICK_SECONDS", "nan"),
    ],
)
def test_unusable_number_is_an_error_naming_the_variable(base_env, name, value):
    base_env[name] = value

    with pytest.raises(ConfigError, match=name):
        load_settings(base_env)


@pytest.mark.parametrize(
    ("from_address", "domain"),
    [
        ("Newsroom Digest <digest@news.example.com>", "news.example.com"),
        ("alerts@mail.example.org", "mail.example.org"),
    ],
)
def test_sender_domain(base_env, from_address, domain):
    base_env["DIGEST_FROM"] = from_address

    assert load_settings(base_env).sender_domain == domain


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGEST_TRACKING", "yes"),
        ("DIGEST_LOG_FORMAT", "xml"),
        ("DIGEST_LOG_LEVEL", "verbose"),
    ],
)
def test_unknown_choice_is_an_error_listing_the_choices(base_env, name, value):
    base_env[name] = value

    with pytest.raises(ConfigError, match=rf"{name}='{value}' must be one of: "):
        load_settings(base_env)


def test_log_settings_are_case_insensitive(base_env):
    base_env.update(DIGEST_LOG_FORMAT="JSON", DIGEST_LOG_LEVEL="Warning")
    settings = load_settings(base_env)
    assert (settings.log_format, settings.log_level) == ("json", "WARNING")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("smtp://user:s3cret@relay.example:587", "smtp://user:***@relay.example:587"),
        ("smtps://relay.example", "smtps://relay.example"),
        (
            "smtp://a:p@one.example:25, smtp://two.example:25",
            "smtp://a:***@one.example:25,smtp://two.example:25",
        ),
        ("file:///var/outbox", "file:///var/outbox"),
        ("SMTP://u:p@relay.example", "SMTP://u:***@relay.example"),
        (
            "postgresql+psycopg://digest:pw@db:5432/digest",
            "postgresql+psycopg://digest:***@db:5432/digest",
        ),
    ],
)
def test_redacted_urls_keep_everything_but_the_password(url, shown):
    assert redact_url(url) == shown
