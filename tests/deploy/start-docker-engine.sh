#!/usr/bin/env bash
# Makes sure a Docker engine answers, starting Debian's (`apt-get install docker.io`) in the
# background where none runs: CI containers and this project's machines have no systemd to
# start it. Used by .ci/run and by the deployment test (tests/deploy/test_containers.py).
# Exit 0: an engine answers. Exit 1: none can run here; the reason is on stderr.
set -euo pipefail

command -v docker >/dev/null || { echo "no docker client (apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null || { echo "dockerd is not installed (apt-get install docker.io)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the Docker engine is not running and only root starts it" >&2; exit 1; }

log=${DOCKERD_LOG:-/var/log/dockerd.log}
echo "starting dockerd (log: $log)" >&2
# Its own session, so that it outlives the shell or test that started it, as a service would.
setsid dockerd >>"$log" 2>&1 </dev/null &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
done
echo "dockerd did not answer within 30 s; the end of $log:" >&2
tail -20 "$log" >&2
exit 1
