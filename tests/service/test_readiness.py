"""Readiness follows the store: a Redis server that goes away makes /readyz answer 503."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import start_redis
from tests.service.helpers import FEATURES_MODEL


def test_readyz_reports_an_unreachable_store(tmp_path: Path) -> None:
    server, port = start_redis(tmp_path)
    try:
        settings = Settings(model_dir=FEATURES_MODEL, store_url=f"redis://127.0.0.1:{port}/0")
        with TestClient(create_app(settings)) as app:
            assert app.get("/readyz").json()["status"] == "ready"
            server.terminate()
            server.wait(timeout=10)
            response = app.get("/readyz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert app.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        server.kill()
        server.wait(timeout=10)
