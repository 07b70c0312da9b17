"""Static checks of the container setup: docker-compose.yml, Dockerfile and .env.example.

None of this needs Docker. The point is to catch, in the ordinary unit run, the drift that
otherwise shows up only at ``docker compose up``: a renamed CLI subcommand, a variable used in
compose but not documented, a service that starts before the migrations have run.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"

REQUIRED_SERVICES = {"postgres", "rabbitmq", "migrate", "web", "worker", "beat"}
# Images that accept SMTP and keep the mail for inspection instead of delivering it.
SMTP_CATCHER_IMAGES = {"axllent/mailpit", "mailhog/mailhog"}


@dataclass(frozen=True)
class AppService:
    """What a service built from this repository must run, and what it must wait for."""

    subcommand: str
    waits_for: dict[str, str]  # dependency -> depends_on condition


# Without these conditions Compose starts everything at once: the web would serve (and the
# worker send) against a schema that isn't there yet, and Celery would die on a broker that
# isn't accepting connections.
_AFTER_MIGRATE = {"migrate": "service_completed_successfully", "rabbitmq": "service_healthy"}
APP_SERVICES = {
    "migrate": AppService("init", {"postgres": "service_healthy"}),
    "web": AppService("web", _AFTER_MIGRATE),
    "worker": AppService("worker", _AFTER_MIGRATE),
    "beat": AppService("beat", _AFTER_MIGRATE),
}

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}...
# and bare $VAR. "$$" is an escaped, literal dollar sign.
_INTERPOLATION = re.compile(
    r"(?<!\$)\$(?:\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


# --- docker-compose.yml -------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    # PyYAML is YAML 1.1, stricter than Compose (e.g. an unquoted `no` becomes False), so a
    # file that passes here also means the same thing to Compose.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def built_from_repo(service: dict[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in {".", "./"}


def built_service_names() -> list[str]:
    return sorted(name for name, service in services().items() if built_from_repo(service))


def depends_on_conditions(service: dict[str, Any]) -> dict[str, str]:
    """depends_on in either syntax, as dependency -> condition (the list form means started)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {name: spec["condition"] for name, spec in depends_on.items()}


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """environment in either syntax (mapping, or a list of KEY=VALUE / bare KEY)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return env
    return {key: value for key, _, value in (item.partition("=") for item in env)}


def _strings(node: Any) -> Iterator[str]:
    """Every string in the loaded file, keys included: where Compose interpolates."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def interpolated_variables() -> dict[str, set[str]]:
    """Variable name -> the defaults given for it (empty set if used without one).

    Walks the parsed document rather than the raw text so that ${...} in comments, which
    Compose ignores, is ignored here too.
    """
    found: dict[str, set[str]] = {}
    for text in _strings(compose()):
        for match in _INTERPOLATION.finditer(text):
            defaults = found.setdefault(match["name"] or match["bare"], set())
            if match["op"] in {"-", ":-"}:
                defaults.add(match["arg"])
    return found


# --- Dockerfile ---------------------------------------------------------------------------


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_last(keyword: str) -> str | None:
    """Arguments of the last `keyword` instruction: the one in effect for CMD, USER, ENTRYPOINT."""
    matches = [arguments for name, arguments in dockerfile_instructions() if name == keyword]
    return matches[-1] if matches else None


def command_words(command: str | list[str]) -> list[str]:
    """A command in exec form (JSON/YAML list) or shell form (string), as words."""
    if isinstance(command, list):
        return command
    if command.lstrip().startswith("["):
        return json.loads(command)
    return shlex.split(command)


def dockerfile_cmd() -> list[str]:
    cmd = dockerfile_last("CMD")
    assert cmd is not None, "Dockerfile has no CMD"
    return command_words(cmd)


# --- .env.example -------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvEntry:
    value: str
    commented: bool  # the line above it is a comment


@cache
def env_example() -> dict[str, EnvEntry]:
    entries: dict[str, EnvEntry] = {}
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, sep, value = stripped.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            # Compose strips one pair of matching quotes around a value.
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            entries[key.strip()] = EnvEntry(value, previous.startswith("#"))
        previous = stripped
    return entries


# --- the CLI ------------------------------------------------------------------------------


def assert_digest_subcommand(words: list[str], where: str) -> str:
    """Assert `words` is `digest <real subcommand> ...` and return the subcommand."""
    # Imported here, not at module level, so a broken CLI fails these tests only and the
    # schema/compose checks above still report.
    from digest.cli import main

    assert len(words) >= 2 and words[0] == "digest", f"{where}: {words} is not `digest <cmd>`"
    assert words[1] in main.commands, (
        f"{where}: `digest {words[1]}` is not a subcommand (have: {sorted(main.commands)})"
    )
    return words[1]


# --- tests --------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # Use the draft the spec declares ($schema); Draft 7 only if it ever stops declaring one.
    validator_class = validator_for(schema, default=Draft7Validator)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def test_required_services_exist() -> None:
    assert services().keys() >= REQUIRED_SERVICES


def image_repository(image: str) -> str:
    """ "reg:5000/axllent/mailpit:v1@sha256:..." -> "reg:5000/axllent/mailpit"."""
    name = image.partition("@")[0]
    base, colon, tag = name.rpartition(":")
    # A ":" followed by a "/" belongs to a registry port, not a tag.
    return base if colon and "/" not in tag else name


def test_an_smtp_catcher_exists() -> None:
    images = {image_repository(service.get("image", "")) for service in services().values()}
    assert images & SMTP_CATCHER_IMAGES, f"none of {sorted(SMTP_CATCHER_IMAGES)} in {images}"


def test_beat_runs_exactly_one_replica() -> None:
    # Two schedulers would enqueue every periodic task twice.
    beat = services()["beat"]
    replicas = (beat.get("deploy") or {}).get("replicas", 1)
    assert int(replicas) == 1 and int(beat.get("scale", 1)) == 1


def test_every_built_service_is_accounted_for() -> None:
    # A new service built from the repo needs an entry in APP_SERVICES saying what it runs and
    # waits for; otherwise the checks below would silently skip it.
    assert set(built_service_names()) == APP_SERVICES.keys()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_waits_for_its_dependencies(name: str) -> None:
    expected = APP_SERVICES[name].waits_for
    actual = depends_on_conditions(services()[name])
    assert expected.items() <= actual.items(), f"{name}: expected {expected}, got {actual}"


def test_service_healthy_conditions_have_a_healthcheck() -> None:
    # Compose refuses to start a service waiting on `service_healthy` of one that never reports
    # health. (A HEALTHCHECK baked into an image would do too, but isn't visible from here.)
    for name, service in services().items():
        for dependency, condition in depends_on_conditions(service).items():
            assert dependency in services(), f"{name} depends on unknown service {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services()[dependency], f"{name} -> {dependency}"


def test_web_healthcheck_asks_readiness() -> None:
    test = services()["web"]["healthcheck"]["test"]
    assert "/readyz" in (test if isinstance(test, str) else " ".join(test))


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_worker_and_beat_healthchecks_run_digest_health(name: str) -> None:
    test = services()[name]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: the health check should run without a shell"
    assert assert_digest_subcommand(test[1:], f"{name} healthcheck") == "health"


@pytest.mark.parametrize("name", built_service_names())
def test_built_service_runs_a_real_subcommand(name: str) -> None:
    service = services()[name]
    # No `command:` means the image's CMD runs.
    words = command_words(service["command"]) if "command" in service else dockerfile_cmd()
    subcommand = assert_digest_subcommand(words, f"docker-compose.yml service {name}")
    if name in APP_SERVICES:
        assert subcommand == APP_SERVICES[name].subcommand


def test_every_variable_is_documented_in_env_example() -> None:
    passed_to_app = {key for name in built_service_names() for key in environment(services()[name])}
    undocumented = (interpolated_variables().keys() | passed_to_app) - env_example().keys()
    assert not undocumented, f"add to .env.example: {sorted(undocumented)}"


def test_env_example_values_are_the_compose_defaults() -> None:
    # So that copying .env.example to .env changes nothing until someone edits it.
    documented = env_example()
    mismatched = {
        name: (documented[name].value, default)
        for name, defaults in interpolated_variables().items()
        for default in defaults
        if name in documented and documented[name].value != default
    }
    assert not mismatched, f".env.example value vs compose default: {mismatched}"


def test_every_env_example_entry_has_a_comment() -> None:
    uncommented = [key for key, entry in env_example().items() if not entry.commented]
    assert not uncommented, f"explain these in .env.example: {uncommented}"


def test_dockerfile_cmd_runs_a_real_subcommand() -> None:
    assert_digest_subcommand(dockerfile_cmd(), "Dockerfile CMD")


def test_dockerfile_has_no_entrypoint() -> None:
    # With an ENTRYPOINT, compose `command:` lines would become its arguments and the
    # `digest <subcommand>` checks above would be checking the wrong thing.
    assert dockerfile_last("ENTRYPOINT") is None


def test_dockerfile_runs_as_non_root() -> None:
    user = dockerfile_last("USER")
    assert user is not None and user.split(":")[0] not in {"root", "0"}
