#!/usr/bin/env bash
# CI's Docker step: its own dockerd (own socket, data root and exec root, no bridge, no iptables),
# the stand-in base (docker/base.sh, cached in the data root), the real Dockerfile, and the image
# run as documented (tests/docker_smoke.py). dockerd is stopped by its pid at the end. Where
# dockerd cannot start, the step says SKIPPED and why; it never says passed then.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER=/usr/bin/docker
cache=${FILEGATE_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filegate-ci}
run=$(mktemp -d /tmp/filegate-dockerd.XXXXXX)
mkdir -p "$cache/docker"
export DOCKER_HOST="unix://$run/docker.sock"

if ! command -v dockerd >/dev/null 2>&1 || [ ! -x "$DOCKER" ]; then
  echo "docker: SKIPPED — dockerd is not installed (apt-get install docker.io debootstrap)"
  exit 0
fi
dockerd --host "$DOCKER_HOST" --data-root "$cache/docker" --exec-root "$run/exec" \
  --pidfile "$run/dockerd.pid" --bridge=none --iptables=false --ip6tables=false \
  >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
stop_dockerd() {
  kill "$dockerd_pid" 2>/dev/null || true
  wait "$dockerd_pid" 2>/dev/null || true
  umount "$run/exec/netns/default" 2>/dev/null || true
  rm -rf "$run" 2>/dev/null || true
}
trap stop_dockerd EXIT
for _ in $(seq 60); do
  "$DOCKER" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || break
  sleep 0.5
done
if ! "$DOCKER" version >/dev/null 2>&1; then
  echo "docker: SKIPPED — dockerd could not start here:"
  tail -5 "$run/dockerd.log" | sed 's/^/  /'
  exit 0
fi
echo "docker: dockerd $("$DOCKER" version --format '{{.Server.Version}}') (pid $dockerd_pid, data root $cache/docker)"

bash docker/base.sh python:3.12-slim
started=$SECONDS
"$DOCKER" build --network host --quiet --tag filegate:ci . >/dev/null
echo "docker: built the Dockerfile as filegate:ci in $((SECONDS - started)) s"
"$DOCKER" image prune --force >/dev/null  # the build stage of earlier builds
uv run python -m tests.docker_smoke --image filegate:ci
echo "docker: passed"
