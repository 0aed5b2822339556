"""What can be checked here without a container engine: the compose file's shape, hadolint on
both Dockerfiles, and each image's exact command and environment run outside a container."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.stack import interpolate, picture
from tests.service.conftest import free_port, start_redis
from tests.service.helpers import SYNC_DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "service.Dockerfile", ROOT / "docker" / "trainer.Dockerfile"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    instructions = [tuple(line.split(None, 1)) for line in lines if line and line[0] != "#"]
    last_stage = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return [(word.upper(), rest) for word, rest in instructions[last_stage:]]


def image_environment(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            for pair in shlex.split(rest):
                key, value = pair.split("=", 1)
                env[key] = value
    return env


def image_json(path: Path, instruction: str) -> list[str]:
    found = [rest for word, rest in dockerfile_instructions(path) if word == instruction]
    return json.loads(found[-1])


TEST_KEY = "deployment-test-key"


def substituted(value: str) -> str:
    """Compose's variables with nothing set but what an operator must set (the API key)."""
    return interpolate(value, {"CURATORNET_API_KEY": TEST_KEY})


def test_compose_names_the_services_and_their_wiring(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "gateway", "trainer"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    api = services["api"]
    assert api["deploy"]["replicas"] == 2
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["environment"]["CURATORNET_STORE_URL"].startswith("redis://redis:6379")
    assert api["build"]["dockerfile"] == "docker/service.Dockerfile"
    gateway = services["gateway"]
    assert gateway["image"].startswith("nginx:")
    assert len(gateway["ports"]) == 1
    assert gateway["depends_on"]["api"]["condition"] == "service_healthy"
    assert "./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in gateway["volumes"]
    assert "api:8000" in (ROOT / "docker" / "nginx.conf").read_text()
    for name in ("redis", "api", "gateway"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"]
    assert "models:/models" in trainer["volumes"]
    assert "models:/models:ro" in api["volumes"]
    # /admin/model reaches both the trainer's output and the shipped model (a roll-back)
    roots = [Path(root) for root in api["environment"]["CURATORNET_MODELS_ROOT"].split(":")]
    shipped = Path(substituted(api["environment"]["CURATORNET_MODEL_DIR"]))
    for model_dir in (Path("/models/next"), shipped):
        assert any(model_dir.is_relative_to(root) for root in roots), model_dir
    assert set(compose["volumes"]) == {"redis-data", "models", "data"}


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_image_runs_without_root_and_has_a_healthcheck() -> None:
    instructions = dockerfile_instructions(DOCKERFILES[0])
    words = [word for word, _ in instructions]
    assert "HEALTHCHECK" in words
    assert dict(instructions)["USER"] not in ("root", "0")
    copied = [rest.split()[0] for word, rest in instructions if word == "COPY"]
    # the shipped model and the encoder its manifest names, at the relative path it names
    assert {"models/default", "models/encoders"} <= set(copied)
    # its build stage installs the service and the package it shares with training, and not
    # training itself
    sources = re.findall(r"^COPY (\S+)", DOCKERFILES[0].read_text(), re.MULTILINE)
    assert {"curatornet", "service"} <= set(sources)
    assert "training" not in sources
    manifest = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())
    assert manifest["feature_extractor"]["manifest"].startswith("../encoders/")
    assert not any("train]" in rest for _, rest in instructions)  # no TensorFlow extra


def ignored_by_docker(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (its rules: the last
    matching pattern decides, `!` re-includes; a pattern also covers what lies below it)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_everything_the_images_copy_is_in_the_build_context(dockerfile: Path) -> None:
    copies = [line.split() for line in dockerfile.read_text().splitlines()]
    sources = [
        source
        for words in copies
        if words[:1] == ["COPY"] and not words[1].startswith("--")
        for source in words[1:-1]  # every source; the last word is the destination
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored_by_docker(source), f"{source} is excluded by .dockerignore"
    assert ignored_by_docker("data/curatornet.db")  # and what must stay out, does


def test_the_api_containers_command_and_environment_serve_against_real_redis(
    compose: dict, tmp_path: Path
) -> None:
    """Two processes with each api container's exact command and environment, one Redis."""
    server, redis_port = start_redis(tmp_path)
    service_file = DOCKERFILES[0]
    env = image_environment(service_file)
    env |= {k: substituted(str(v)) for k, v in compose["services"]["api"]["environment"].items()}
    # What the container's file system and network would provide, mapped onto this machine:
    env["CURATORNET_MODEL_DIR"] = env["CURATORNET_MODEL_DIR"].replace("/app/", f"{ROOT}/")
    env["CURATORNET_STORE_URL"] = env["CURATORNET_STORE_URL"].replace(
        "redis:6379", f"127.0.0.1:{redis_port}"
    )
    command = image_json(service_file, "CMD")
    command = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    healthcheck = compose["services"]["api"]["healthcheck"]["test"][1:]
    processes, ports = [], []
    try:
        for _ in range(2):
            port = free_port()
            ports.append(port)
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env={**os.environ, **env, "CURATORNET_PORT": str(port)},
                )
            )
        for port in ports:
            _wait_ready(f"http://127.0.0.1:{port}")
            check = [sys.executable, *healthcheck[1:]]
            check[-1] = check[-1].replace("8000", str(port))
            assert subprocess.run(check, check=False).returncode == 0
        assert env["CURATORNET_API_KEY"] == TEST_KEY  # compose refuses to start without one
        first, second = (
            httpx.Client(base_url=f"http://127.0.0.1:{p}", headers={"X-API-Key": TEST_KEY})
            for p in ports
        )
        files = {"image": ("work.jpg", picture(), "image/jpeg")}
        form = {"id": "via-first", "artist_id": "a"}
        assert first.post("/items", data=form, files=files).status_code == 200
        # The replica sync promise is a second (benchmarks/serve.py); a loaded machine gets more.
        deadline = time.monotonic() + SYNC_DEADLINE_S
        while second.get("/readyz").json()["index_size"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert second.get("/items/via-first").status_code == 200
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        server.terminate()
        server.wait(timeout=10)


def test_the_trainer_images_entrypoint_runs() -> None:
    entrypoint = image_json(DOCKERFILES[1], "ENTRYPOINT")
    default = image_json(DOCKERFILES[1], "CMD")
    command = [sys.executable if entrypoint[0] == "python" else entrypoint[0], *entrypoint[1:]]
    result = subprocess.run([*command, *default], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "train" in result.stdout


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not become ready")
