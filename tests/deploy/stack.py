"""What the deployment tests share; mainly the compose file's services run by plain `docker`
commands as `docker compose` would run them, because Compose v2 is not installed here (Debian
ships only docker-compose 1.29, which refuses the file's top-level `name:`). Every container,
network and volume is read off docker-compose.yml, named as Compose names it under a project
name of its own, and labelled, so that `down` removes exactly what one run made and a later run
removes what a killed run left."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The label on everything a run makes; its value is the run's project name.
LABEL = "org.curatornet.deploy-test"
PROJECT_PREFIX = "curatornet-test-"
# docker/stand-in-base-images.sh's label on the images it makes (and so on those built on them).
STAND_IN_LABEL = "org.curatornet.stand-in"
# Each image the deployment test builds, by the compose service that names it.
BUILT = ("api", "trainer")


class DockerError(RuntimeError):
    pass


def docker(*arguments: str, timeout: float = 120, check: bool = True) -> str:
    """`docker ARGUMENTS`' output; DockerError with its stderr when it fails and `check`."""
    result = subprocess.run(
        ["docker", *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise DockerError(f"docker {shlex.join(arguments)}: {result.stderr.strip()}")
    return result.stdout.strip()


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} against `variables` (the
    operator's environment); a required variable that is not set is an error, as in Compose."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        return argument or ""

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def picture() -> bytes:
    """A JPEG painting (a Mandelbrot set): the picture the deployment tests upload."""
    buffer = io.BytesIO()
    Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB").save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def health_options(check: Mapping[str, Any]) -> list[str]:
    """A compose healthcheck as `docker run` options (the CLI takes its command as a shell
    line: CMD's words are quoted into one)."""
    test = check["test"]
    command = shlex.join(test[1:]) if test[0] == "CMD" else test[1]
    options = ["--health-cmd", command]
    for key in ("interval", "timeout", "retries", "start_period"):
        if key in check:
            options += [f"--health-{key.replace('_', '-')}", str(check[key])]
    return options


@dataclass
class Stack:
    """One project of the compose file's services on its own network and volumes."""

    compose: dict[str, Any]
    variables: dict[str, str]
    project: str = field(default_factory=lambda: f"{PROJECT_PREFIX}{os.getpid()}")
    # service -> its containers' names, in the order they were started
    containers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"

    def create(self) -> None:
        """The project's network and named volumes, as `docker compose up` creates them."""
        label = f"{LABEL}={self.project}"
        docker("network", "create", "--label", label, self.network)
        for name in self.compose.get("volumes") or {}:
            docker("volume", "create", "--label", label, self.volume(name))

    def options(self, service: str, one_off: bool = False) -> list[str]:
        """What `docker run` needs for one container of `service`, beside its name; a one-off
        container (`docker compose run`) without the service's restart policy."""
        spec = self.compose["services"][service]
        options = ["--label", f"{LABEL}={self.project}", "--network", self.network]
        options += ["--network-alias", service]  # how Compose makes `api` resolve to every replica
        for key, value in (spec.get("environment") or {}).items():
            options += ["-e", f"{key}={interpolate(str(value), self.variables)}"]
        for mount in spec.get("volumes") or []:
            source, rest = mount.split(":", 1)
            if source.startswith((".", "/")):
                source = str((ROOT / source).resolve())
            else:
                source = self.volume(source)
            options += ["-v", f"{source}:{rest}"]
        for port in spec.get("ports") or []:
            # published on the loopback only: a test's stack is nobody else's business
            options += ["-p", f"127.0.0.1:{interpolate(str(port), self.variables)}"]
        if "healthcheck" in spec:
            options += health_options(spec["healthcheck"])
        if "restart" in spec and not one_off:
            options += ["--restart", spec["restart"]]
        return options

    def start(self, service: str) -> str:
        """One more container of `service` (Compose's `--scale` adds them so); its name."""
        spec = self.compose["services"][service]
        names = self.containers.setdefault(service, [])
        number = 1 + max((int(name.rsplit("-", 1)[1]) for name in names), default=0)
        name = f"{self.project}-{service}-{number}"
        command = [interpolate(str(word), self.variables) for word in spec.get("command") or []]
        docker("run", "-d", "--name", name, *self.options(service), spec["image"], *command)
        names.append(name)
        return name

    def up(self, timeout_s: float = 180) -> dict[str, float]:
        """Every service without a profile, in dependency order, each dependency healthy
        before what needs it starts, as `docker compose up -d --wait` does; the seconds from
        each service's start to all its containers being healthy."""
        services = {name: spec for name, spec in self.compose["services"].items()}
        pending = [name for name, spec in services.items() if not spec.get("profiles")]
        started: dict[str, float] = {}
        healthy: dict[str, float] = {}
        while pending:
            ready = [
                name
                for name in pending
                if all(dep in healthy for dep in services[name].get("depends_on") or {})
            ]
            if not ready:
                raise DockerError(f"dependencies that cannot be met: {pending}")
            for name in ready:
                replicas = (services[name].get("deploy") or {}).get("replicas", 1)
                started[name] = time.monotonic()
                for _ in range(replicas):
                    self.start(name)
                pending.remove(name)
            for name in ready:
                self.wait_healthy(self.containers[name], timeout_s)
                healthy[name] = time.monotonic() - started[name]
        return healthy

    def wait_healthy(self, names: list[str], timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while (status := self.health(name)) != "healthy":
                # "restarting": it exited, and its restart policy brings it back (a crash loop)
                failed = status in ("unhealthy", "exited", "dead", "restarting")
                if failed or time.monotonic() > deadline:
                    raise DockerError(f"{name} is {status}:\n{self.logs(name)}")
                time.sleep(0.25)

    def remove(self, name: str) -> None:
        """Removes one container and its anonymous volumes (the api image's /data)."""
        docker("rm", "-f", "-v", name)
        for names in self.containers.values():
            if name in names:
                names.remove(name)

    def health(self, name: str) -> str:
        """The container's health, or its state when it is not running."""
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name))
        if state["Status"] != "running":
            return str(state["Status"])
        return str(state.get("Health", {}).get("Status", "running"))

    def address(self, name: str) -> str:
        """The container's address on the project network (reachable from this host)."""
        template = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return docker("inspect", "-f", template, name)

    def logs(self, name: str, tail: int | None = 200) -> str:
        """The container's output: its last `tail` lines, or all of it."""
        result = subprocess.run(
            ["docker", "logs", "--tail", "all" if tail is None else str(tail), name],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout + result.stderr

    def run(self, service: str, *arguments: str, timeout_s: float = 1800) -> str:
        """`docker compose run --rm SERVICE ARGUMENTS`: a one-off container, its output."""
        spec = self.compose["services"][service]
        options = self.options(service, one_off=True)
        return docker("run", "--rm", *options, spec["image"], *arguments, timeout=timeout_s)

    def down(self) -> None:
        """Removes the project's containers, network and volumes: `docker compose down -v`."""
        remove(self.project)


def remove(project: str) -> None:
    label = f"label={LABEL}={project}"
    containers = docker("ps", "-aq", "--filter", label, check=False).split()
    if containers:
        docker("rm", "-f", "-v", *containers, check=False)
    for network in docker("network", "ls", "-q", "--filter", label, check=False).split():
        docker("network", "rm", network, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", label, check=False).split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)


def remove_abandoned() -> list[str]:
    """Removes what runs whose process is gone left behind (a run killed before its clean-up:
    its containers restart with the engine otherwise); the projects removed."""
    listed = docker(
        "ps", "-a", "--filter", f"label={LABEL}", "--format", f'{{{{.Label "{LABEL}"}}}}'
    )
    listed += "\n" + docker(
        "volume", "ls", "--filter", f"label={LABEL}", "--format", f'{{{{.Label "{LABEL}"}}}}'
    )
    abandoned = []
    for project in sorted(set(listed.split())):
        pid = project.removeprefix(PROJECT_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove(project)
            abandoned.append(project)
    return abandoned


def base_images(compose: Mapping[str, Any]) -> list[str]:
    """The images the compose file runs as they are and those its built images start FROM."""
    bases = {spec["image"] for spec in compose["services"].values() if "build" not in spec}
    for service in BUILT:
        dockerfile = ROOT / compose["services"][service]["build"]["dockerfile"]
        bases |= set(re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.MULTILINE))
    return sorted(base for base in bases if ":" in base)  # not a stage's name


def prepare_base_images(bases: list[str], capture: bool) -> subprocess.CompletedProcess[str]:
    """docker/stand-in-base-images.sh for these images: pulled, or stood in for offline."""
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "stand-in-base-images.sh"), *bases],
        capture_output=capture,
        text=True,
        check=False,
        timeout=900,
    )


if __name__ == "__main__":
    # .ci/run: the base images made with the machine's set-up, before the timed test suite
    # (the first stand-ins take minutes); the deployment test then finds them ready.
    import sys

    import yaml

    sys.exit(
        prepare_base_images(
            base_images(yaml.safe_load((ROOT / "docker-compose.yml").read_text())), capture=False
        ).returncode
    )
