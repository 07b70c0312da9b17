"""The stats API over real HTTP (uvicorn) on PostgreSQL: auth, JSON, CSV, OpenAPI."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from digest.config import Settings, load_settings
from digest.models import ClickKind, OpenKind
from digest.stats import CSV_COLUMNS
from tests.support import sent_with_engagement

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBSCRIBERS = 5


@pytest.fixture
def settings(env: dict[str, str], postgres_url: str) -> Settings:
    return load_settings({**env, "DIGEST_DATABASE_URL": postgres_url, "DIGEST_API_TOKENS": TOKEN})


@pytest.fixture
def edition(settings: Settings) -> dict[str, int]:
    """A sent edition: two readers open it, one of them clicks the first story twice, a
    privacy proxy prefetches and a scanner follows the link."""
    edition, first = sent_with_engagement(
        settings,
        SUBSCRIBERS,
        opens=[OpenKind.HUMAN, OpenKind.HUMAN, OpenKind.PREFETCH],
        clicks=[(0, ClickKind.HUMAN), (0, ClickKind.HUMAN), (3, ClickKind.SCANNER)],
    )
    return {"id": edition.id, "story_id": first["story_id"], "link_id": first["link_id"]}


@pytest.fixture
def base(settings: Settings, web_server) -> str:
    return web_server(settings)


def test_the_api_is_off_without_tokens(env, postgres_url, web_server, edition) -> None:
    closed = web_server(load_settings({**env, "DIGEST_DATABASE_URL": postgres_url}))
    response = httpx.get(f"{closed}/api/editions/{edition['id']}/stats", headers=AUTH)
    assert response.status_code == 503


@pytest.mark.parametrize("suffix", ["stats", "stats.csv"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_a_valid_token_is_required(base, edition, suffix, headers) -> None:
    response = httpx.get(f"{base}/api/editions/{edition['id']}/{suffix}", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_json_stats(base, edition) -> None:
    response = httpx.get(f"{base}/api/editions/{edition['id']}/stats", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    summary = body["edition"]
    assert summary["edition_id"] == edition["id"]
    assert summary["deliveries"]["sent"] == summary["delivered"] == SUBSCRIBERS
    assert summary["recipients"] == SUBSCRIBERS
    assert summary["unique_human_opens"] == 2
    assert summary["opens_by_kind"]["prefetch"] == {"unique": 1, "total": 1}
    assert (summary["unique_human_clicks"], summary["total_human_clicks"]) == (1, 2)
    assert summary["clicks_by_kind"]["scanner"] == {"unique": 1, "total": 1}
    assert summary["click_rate"] == pytest.approx(1 / SUBSCRIBERS)
    assert summary["click_to_open_rate"] == pytest.approx(1 / 2)
    assert summary["unsubscribes"] == 0
    assert summary["bounces"] == {"hard": 0, "soft": 0, "complaint": 0}

    first = body["stories"][0]
    assert (first["story_id"], first["link_id"]) == (edition["story_id"], edition["link_id"])
    assert first["clicks"] == {"unique_human": 1, "total_human": 2, "non_human": 1}
    assert body["links"][0]["clicks"] == first["clicks"]
    assert body["links"][0]["url"] == first["url"]
    section = next(s for s in body["sections"] if s["section"] == first["section"])
    assert section["clicks"]["unique_human"] == 1
    assert sum(s["stories"] for s in body["sections"]) == len(body["stories"])


def test_csv_stats(base, edition) -> None:
    response = httpx.get(f"{base}/api/editions/{edition['id']}/stats.csv", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    first = rows[0]
    assert (first["level"], first["link_id"]) == ("story", str(edition["link_id"]))
    assert (first["unique_human_clicks"], first["total_human_clicks"]) == ("1", "2")
    assert first["non_human_clicks"] == "1"
    assert {r["level"] for r in rows} == {"story", "link"}


@pytest.mark.parametrize("suffix", ["stats", "stats.csv"])
def test_unknown_edition_is_not_found(base, edition, suffix) -> None:
    response = httpx.get(f"{base}/api/editions/{edition['id'] + 1000}/{suffix}", headers=AUTH)
    assert response.status_code == 404
    assert "no edition" in response.json()["detail"]


def test_the_routes_are_in_the_openapi_document(base) -> None:
    document = httpx.get(f"{base}/openapi.json").json()
    paths = document["paths"]
    json_route = paths["/api/editions/{edition_id}/stats"]["get"]
    csv_route = paths["/api/editions/{edition_id}/stats.csv"]["get"]
    assert "text/csv" in csv_route["responses"]["200"]["content"]
    schema = json_route["responses"]["200"]["content"]["application/json"]["schema"]
    report = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(report["properties"]) == {"edition", "stories", "links", "sections"}
    assert {"404"} <= set(json_route["responses"]) and {"404"} <= set(csv_route["responses"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
