"""`python -m service load`, run as a user runs it: a catalogue loaded from NDJSON is what
POST /items makes of the same works, a running service follows the load through the change
log, and a bad line is named by file and line with nothing of its batch written."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curatornet.dataset import Dataset
from service.stores import open_store
from service.stores.base import Store
from tests.service.conftest import free_port
from tests.service.helpers import FEATURES_MODEL, ROOT, LiveService, eventually, item_payload
from tests.service.test_api import post_items, running
from training.data.formats import load_dataset

WORKS = 40
BATCH = 16  # lines per batch in these tests: three batches for WORKS


@pytest.fixture(scope="module")
def market(tiny_market_dir: Path) -> Dataset:
    return load_dataset(tiny_market_dir)


def catalogue(market: Dataset) -> list[dict]:
    """WORKS works of the tiny market as POST /items takes them: both feature encodings, a few
    editions with stock given, metadata."""
    works = []
    for row in range(WORKS):
        work = item_payload(market, row)
        if row % 2:
            features = np.asarray(work.pop("features"), "<f4")
            work["features_b64"] = base64.b64encode(features.tobytes()).decode()
        if row % 7 == 0:
            work.update(edition_size=5, stock=3)
        works.append(work)
    return works


def write_lines(path: Path, lines: list[dict | str]) -> Path:
    path.write_text(
        "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    )
    return path


def load(
    store_url: str, *arguments: str | Path, stdin: str | None = None, batch: int | None = BATCH
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "load", "--store-url", store_url]
    if batch is not None:
        command += ["--batch-items", str(batch)]
    environment = {**os.environ, "CURATORNET_MODEL_DIR": str(FEATURES_MODEL)}
    return subprocess.run(
        [*command, *map(str, arguments)],
        cwd=ROOT,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stored(store: Store, item_ids: list[str]) -> dict[str, tuple]:
    """Everything a store holds of these works but its keys and times."""
    return {
        item.id: (
            item.artist_id,
            item.edition_size,
            item.stock,
            item.sold,
            item.metadata,
            item.features.tolist(),
            np.round(item.embedding, 5).tolist(),
        )
        for item in store.get_items(item_ids).values()
    }


def test_a_loaded_catalogue_is_what_post_items_makes_and_a_running_service_follows(
    market: Dataset, store_url: str, second_store_url: str, tmp_path: Path
) -> None:
    works = catalogue(market)
    ids = [work["id"] for work in works]
    service = LiveService(store_url)
    try:
        result = load(store_url, write_lines(tmp_path / "works.ndjson", works))
        assert result.returncode == 0, result.stderr
        assert f"{WORKS} works loaded ({WORKS} new, 0 replaced)" in result.stdout
        # The running service learns of every work through the change log, none by restarting.
        assert eventually(lambda: service.client.get("/readyz").json()["index_size"] == WORKS)
        similar = service.client.get(f"/items/{ids[0]}/similar", params={"k": 5}).json()
        assert len(similar["items"]) == 5
        assert service.client.get(f"/items/{ids[7]}").json()["stock"] == 3
    finally:
        service.stop()
    with running(second_store_url) as client:
        for start in range(0, WORKS, BATCH):
            post_items(client, works[start : start + BATCH])
    loaded, posted = open_store(store_url), open_store(second_store_url)
    assert stored(loaded, ids) == stored(posted, ids)
    assert len(stored(loaded, ids)) == WORKS
    # Loading the same file again writes each work again as it was: nothing new.
    again = load(store_url, tmp_path / "works.ndjson")
    assert f"{WORKS} works loaded (0 new, {WORKS} replaced)" in again.stdout
    assert stored(loaded, ids) == stored(posted, ids)
    loaded.close()
    posted.close()


def test_a_bad_line_is_named_and_nothing_of_its_batch_is_written(
    market: Dataset, store_url: str, tmp_path: Path
) -> None:
    works = catalogue(market)
    lines: list[dict | str] = [*works[:BATCH], {**works[BATCH], "features": [0.5, 0.5]}]
    lines += works[BATCH + 1 :]
    path = write_lines(tmp_path / "bad.ndjson", lines)
    result = load(store_url, path)
    assert result.returncode == 1
    line = BATCH + 1
    assert f"{path}:{line}: features: expected 2048 values, got 2" in result.stderr
    assert f"the {BATCH} works before it were" in result.stderr
    store = open_store(store_url)
    assert store.counts().items == BATCH  # the first batch, and nothing of the second
    assert set(store.get_items([w["id"] for w in works])) == {w["id"] for w in works[:BATCH]}
    _, keys = store.changes_since("0-0" if store_url.startswith("redis") else "0")
    assert len(keys) == BATCH
    store.close()


def test_by_default_a_batch_is_5000_lines_into_sqlite_and_1000_into_redis(
    market: Dataset, store_url: str, tmp_path: Path
) -> None:
    """Told nothing, the command writes 1,000 lines per Redis script (Redis serves no one else
    while one runs) and 5,000 per SQLite transaction: a bad line at 1,101 leaves the first
    thousand written into Redis, nothing into SQLite."""
    work = catalogue(market)[1]  # features as base64
    lines: list[dict | str] = [{**work, "id": f"w-{n}"} for n in range(1200)]
    lines[1100] = {**work, "id": "bad", "features": [0.5]}
    result = load(store_url, write_lines(tmp_path / "works.ndjson", lines), batch=None)
    assert result.returncode == 1
    written = 1000 if store_url.startswith("redis") else 0
    assert f"the {written} works before it were" in result.stderr
    store = open_store(store_url)
    assert store.counts().items == written
    store.close()


def test_a_store_that_cannot_answer_is_an_error_not_a_traceback(
    market: Dataset, tmp_path: Path
) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    result = load(nobody, write_lines(tmp_path / "works.ndjson", catalogue(market)[:3]))
    assert result.returncode == 1
    assert "error: the store cannot answer (ConnectionError" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_every_bad_line_and_writes_nothing(
    market: Dataset, store_url: str, tmp_path: Path
) -> None:
    works = catalogue(market)
    lines: list[dict | str] = list(works)
    lines[3] = "{not json"
    lines[20] = {**works[20], "features": ["0.5"] * 2048}
    lines[30] = {**works[30], "id": works[2]["id"]}  # a repeat, in another batch
    lines.insert(35, "")  # blank lines are skipped
    path = write_lines(tmp_path / "catalogue.ndjson", lines)
    result = load(store_url, "--check", path)
    assert result.returncode == 1
    errors = [
        line for line in result.stderr.splitlines() if line.startswith(("error: ", str(path)))
    ]
    quotes = "Expecting property name enclosed in double quotes"
    assert errors == [
        f"error: {path}:4: not JSON: {quotes} (character 1)",
        *(f"{path}:21: features.{n}: Input should be a valid number" for n in range(3)),
        f"{path}:21: and 2045 more problems on this line",
        f"{path}:31: id: {works[2]['id']!r} repeats {path}:3",
    ]
    assert "nothing was written (--check)" in result.stderr
    store = open_store(store_url)
    assert store.counts().items == 0
    store.close()
    fine = write_lines(tmp_path / "fine.ndjson", works).read_text()
    checked = load(store_url, "--check", "-", stdin=fine)  # - reads standard input
    assert checked.returncode == 0, checked.stderr
    assert f"{WORKS} works checked" in checked.stdout
