"""The deployment for real: the images built, and the compose file's stack run in containers
(tests/deploy/stack.py) and checked from outside, through the gateway's published port, as a
client sees it. Wherever a Docker engine runs or can be started (.ci/run installs Debian's);
skipped, saying why, only where none can. Base images that cannot be pulled are stood in for
from Debian packages (docker/stand-in-base-images.sh), and the images built on them say so.

The images are built once per run; the engine's layer cache makes a rebuild of unchanged
sources take seconds. The trainer image (TensorFlow, PyTorch: gigabytes) is built only by the
`slow` test at the end (`./dev test -m slow tests/deploy`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.stack import (
    ROOT,
    STAND_IN_LABEL,
    Stack,
    base_images,
    docker,
    picture,
    prepare_base_images,
    remove_abandoned,
)
from tests.service.conftest import free_port
from tests.service.helpers import SYNC_DEADLINE_S, eventually, random_item

HERE = Path(__file__).resolve().parent
API_KEY = "deployment-test-key"
ADMIN_KEY = "deployment-test-admin-key"
# What the shipped model (the api image's default) takes: the image encoder's features.
FEATURE_DIM = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())["feature_dim"]

Report = Callable[[str], None]


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Report:
    """Writes a measured figure into the test run's output (build times, sizes, start-up),
    past pytest's capture, as its live logging does, so that CI's log keeps the figures."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"deploy: {line}")

    return write


@pytest.fixture(scope="session")
def engine(compose: dict, report: Report) -> None:
    """A Docker engine, started if need be, and the base images the compose file and the
    Dockerfiles name: pulled, or stood in for where no registry answers."""
    started = subprocess.run(
        ["bash", str(HERE / "start-docker-engine.sh")], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        pytest.skip(f"no Docker engine can run here: {started.stderr.strip()}")
    abandoned = remove_abandoned()
    if abandoned:
        report(f"removed what killed runs left: {', '.join(abandoned)}")
    bases = base_images(compose)
    began = time.monotonic()
    prepared = prepare_base_images(bases, capture=True)
    assert prepared.returncode == 0, prepared.stderr
    stand_ins = [base for base in bases if stand_in(base)]
    report(
        f"base images ready in {time.monotonic() - began:.1f} s"
        + (f"; STAND-INS from Debian packages: {', '.join(stand_ins)}" if stand_ins else "")
    )


def stand_in(image: str) -> str:
    """The stand-in label of an image, or of the base it was built on; empty for the real one."""
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", image))
    return (labels or {}).get(STAND_IN_LABEL, "")


def build(compose: dict, service: str, report: Report) -> str:
    """`docker compose build SERVICE`: its image, built with the engine's layer cache."""
    spec = compose["services"][service]
    image = spec["image"]
    previous = docker("image", "inspect", "-f", "{{.Id}}", image, check=False)
    began = time.monotonic()
    recipe = spec["build"]
    result = subprocess.run(
        ["docker", "build", "-f", recipe["dockerfile"], "-t", image, recipe["context"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    if previous and previous != docker("image", "inspect", "-f", "{{.Id}}", image):
        # The image this tag named before, untagged now: run after run of changed sources,
        # those would pile up on CI's disk (gigabytes each, the trainer's).
        docker("rmi", previous, check=False)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    output = result.stdout + result.stderr
    cached = output.count("Using cache") + output.count(" CACHED")  # legacy builder, BuildKit
    report(
        f"built {image} in {time.monotonic() - began:.1f} s ({cached} steps from the cache), "
        f"{size / 1e6:.0f} MB" + (" on a stand-in base" if stand_in(image) else "")
    )
    return image


@pytest.fixture(scope="session")
def service_image(engine: None, compose: dict, report: Report) -> str:
    return build(compose, "api", report)


@pytest.fixture(scope="session")
def trainer_image(engine: None, compose: dict, report: Report) -> str:
    return build(compose, "trainer", report)


@pytest.fixture(scope="module")
def stack(service_image: str, compose: dict, report: Report) -> Iterator[Stack]:
    """`docker compose up -d --wait` with the keys set and the gateway on a free port; down,
    volumes included, whatever happens."""
    variables = {
        "CURATORNET_API_KEY": API_KEY,
        "CURATORNET_ADMIN_KEY": ADMIN_KEY,
        "CURATORNET_PUBLISHED_PORT": str(free_port()),
    }
    running = Stack(compose, variables)
    try:
        running.create()
        healthy = running.up()
        report(
            "start-up to healthy (Docker's first health check comes one interval after the "
            "start): " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in healthy.items())
        )
        yield running
    finally:
        running.down()


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    port = stack.variables["CURATORNET_PUBLISHED_PORT"]
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
        yield client


def replica(stack: Stack, name: str) -> httpx.Client:
    """A client of one api container, at its address on the stack's network."""
    url = f"http://{stack.address(name)}:8000"
    return httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60)


@pytest.fixture
def replicas(stack: Stack) -> Iterator[list[httpx.Client]]:
    clients = [replica(stack, name) for name in stack.containers["api"]]
    yield clients
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def catalogue(gateway: httpx.Client) -> list[str]:
    """Thirty artworks uploaded as one batch through the gateway: every test's history."""
    items = [random_item(f"base{i}", seed=i, dim=FEATURE_DIM) for i in range(30)]
    response = gateway.post("/items", json={"items": items})
    assert response.status_code == 200, response.text
    return [item["id"] for item in items]


def recommended(client: httpx.Client, history: list[str], k: int = 500) -> list[str]:
    response = client.post("/recommend", json={"history": history, "k": k})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def served_by(stack: Stack, marker: str) -> list[list[str]]:
    """For each gateway request whose line holds `marker`, the replicas nginx tried, in
    order (the last one answered), from its access log (docker/nginx.conf's format)."""
    (gateway_container,) = stack.containers["gateway"]
    lines = [
        line for line in stack.logs(gateway_container, tail=None).splitlines() if marker in line
    ]
    tried = [re.search(r"upstream=(.*?) upstream_status=", line) for line in lines]
    return [[address.split(":")[0] for address in m.group(1).split(", ")] for m in tried if m]


def test_the_stack_runs_as_the_compose_file_says(
    stack: Stack, gateway: httpx.Client, report: Report
) -> None:
    ready = gateway.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert len(stack.containers["api"]) == stack.compose["services"]["api"]["deploy"]["replicas"]
    for name in stack.containers["api"]:
        assert docker("exec", name, "id", "-u") == "10001"
        mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", name))
        (models,) = [mount for mount in mounts if mount["Destination"] == "/models"]
        assert models["RW"] is False
        assert models["Name"] == stack.volume("models")
    (redis,) = stack.containers["redis"]
    assert docker("exec", redis, "redis-cli", "config", "get", "appendonly").split() == [
        "appendonly",
        "yes",
    ]
    (gateway_container,) = stack.containers["gateway"]
    nginx = subprocess.run(
        ["docker", "exec", gateway_container, "nginx", "-v"], capture_output=True, text=True
    )
    report(f"gateway: {nginx.stderr.strip()}")


def test_uploads_through_the_gateway_are_recommended_by_every_replica(
    gateway: httpx.Client, replicas: list[httpx.Client], catalogue: list[str]
) -> None:
    vectors = random_item("fresh-vectors", seed=99, dim=FEATURE_DIM)
    assert gateway.post("/items", json=vectors).status_code == 200
    files = {"image": ("painting.jpg", picture(), "image/jpeg")}
    form = {"id": "fresh-picture", "artist_id": "painter"}
    response = gateway.post("/items", data=form, files=files)
    assert response.status_code == 200, response.text
    for client in replicas:
        assert eventually(
            lambda c=client: (
                {"fresh-vectors", "fresh-picture"} <= set(recommended(c, catalogue[:1]))
            )
        ), client.base_url
        assert client.get("/items/fresh-picture/image").status_code == 200
    assert gateway.get("/items/fresh-picture/image").content[:2] == b"\xff\xd8"  # the JPEG


def test_a_purchase_through_one_replica_is_never_offered_by_the_other(
    gateway: httpx.Client, replicas: list[httpx.Client], catalogue: list[str]
) -> None:
    first, second = replicas
    unique = random_item("one-of-a-kind", seed=7, dim=FEATURE_DIM)
    assert gateway.post("/items", json=unique).status_code == 200
    assert eventually(lambda: "one-of-a-kind" in recommended(second, catalogue[:1]))
    sale = first.post("/purchases", json={"user_id": "collector", "item_ids": ["one-of-a-kind"]})
    assert sale.status_code == 201, sale.text
    for _ in range(20):  # not even once, not even within the sync interval
        assert "one-of-a-kind" not in recommended(second, catalogue[:1])
    assert "one-of-a-kind" not in recommended(gateway, catalogue[:1])


def test_the_gateway_spreads_requests_over_every_replica_when_scaled(
    stack: Stack, gateway: httpx.Client, catalogue: list[str]
) -> None:
    """`docker compose up --scale api=4`: two more containers answering to `api`, found by
    the gateway without a change or a reload."""
    added = [stack.start("api"), stack.start("api")]
    try:
        stack.wait_healthy(added)
        addresses = {stack.address(name) for name in stack.containers["api"]}
        assert len(addresses) == 4
        marker = uuid.uuid4().hex
        deadline = time.monotonic() + 30  # nginx holds the old answer up to 2 s (`valid`)
        while True:
            for _ in range(20):
                response = gateway.post(f"/recommend?probe={marker}", json={"history": catalogue})
                assert response.status_code == 200, response.text
            answered = {tried[-1] for tried in served_by(stack, marker)}
            if answered >= addresses or time.monotonic() > deadline:
                break
        assert answered == addresses
    finally:
        for name in added:
            stack.remove(name)


def test_the_gateway_answers_when_a_replica_is_killed(
    stack: Stack, gateway: httpx.Client, catalogue: list[str], report: Report
) -> None:
    victim = stack.containers["api"][0]
    marker = uuid.uuid4().hex
    docker("kill", victim)
    try:
        slowest = 0.0
        for _ in range(30):
            began = time.monotonic()
            response = gateway.post(f"/recommend?probe={marker}", json={"history": catalogue})
            slowest = max(slowest, time.monotonic() - began)
            assert response.status_code == 200, response.text
        assert gateway.get("/readyz").status_code == 200
        retried = sum(len(tried) > 1 for tried in served_by(stack, marker))
        report(
            f"30 requests after `docker kill` of one replica: all 200, {retried} first tried "
            f"the dead one, slowest {slowest:.2f} s; the killed container stays "
            f"{stack.health(victim)} (restart: unless-stopped)"
        )
    finally:
        if stack.health(victim) in ("exited", "dead"):
            docker("start", victim)
        stack.wait_healthy([victim])


def test_a_redis_restart_keeps_every_acknowledged_write(
    stack: Stack, gateway: httpx.Client, replicas: list[httpx.Client], catalogue: list[str]
) -> None:
    written = []
    for n in range(40):
        item = random_item(f"durable{n}", seed=500 + n, dim=FEATURE_DIM)
        if gateway.post("/items", json=item).status_code == 200:
            written.append(item["id"])
    bought = []
    for item_id in written[:10]:
        sale = gateway.post("/purchases", json={"user_id": "keeper", "item_ids": [item_id]})
        if sale.status_code == 201:
            bought.append(item_id)
    assert len(written) == 40
    assert len(bought) == 10
    (redis,) = stack.containers["redis"]
    docker("restart", redis)
    stack.wait_healthy([redis])
    for client in replicas:
        assert eventually(lambda c=client: c.get("/readyz").status_code == 200, 60), client.base_url
        for item_id in written:
            assert client.get(f"/items/{item_id}").status_code == 200, item_id
        history = client.get("/users/keeper/history").json()["purchases"]
        assert sorted(p["item_id"] for p in history) == sorted(bought)
        offered = set(recommended(client, catalogue[:1]))
        assert offered.isdisjoint(bought)
        assert set(written[10:]) <= offered


def test_the_gateway_answered_no_request_with_a_5xx(stack: Stack) -> None:
    """Over every request the tests above sent through it, killed replica and scaling
    included: a replica that failed may show in upstream_status, never in the answer."""
    (gateway_container,) = stack.containers["gateway"]
    statuses = re.findall(
        r'" (\d{3}) \d+ [\d.]+ upstream=', stack.logs(gateway_container, tail=None)
    )
    assert len(statuses) > 100  # the log is read whole
    assert [status for status in statuses if status >= "500"] == []


@pytest.mark.slow
def test_a_model_from_the_trainer_image_is_rolled_out_to_every_replica(
    stack: Stack,
    trainer_image: str,
    gateway: httpx.Client,
    replicas: list[httpx.Client],
    catalogue: list[str],
    report: Report,
) -> None:
    """The README's roll-out: the trainer writes a model into the shared volume, which the
    replicas mount read-only, and /admin/model switches every replica to it."""
    began = time.monotonic()
    stack.run("trainer", "synth", "--images", "--scale", "0.05", "--out", "/data/pixels")
    train = stack.compose["services"]["trainer"]["command"]
    # The compose file's own training command, on the small preset (seconds, not minutes).
    train = [str(word) for word in train]
    train[train.index("--preset") + 1] = "tiny"
    stack.run("trainer", *train, "--epochs", "1")
    report(f"trainer: painted a market and trained a model in {time.monotonic() - began:.0f} s")
    before = gateway.get("/model").json()["version"]
    response = gateway.post(
        "/admin/model", json={"model_dir": "/models/next"}, headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 200, response.text
    version = response.json()["version"]
    assert version != before
    for client in replicas:
        assert eventually(
            lambda c=client: c.get("/model").json()["version"] == version, SYNC_DEADLINE_S
        ), client.base_url
        answer = client.post("/recommend", json={"history": catalogue[:3]})
        assert answer.json()["model_version"] == version
