#!/usr/bin/env bash
# A stand-in for python:3.12-slim, for machines that reach Debian's mirror and the package index
# but no container registry (CI here). Built once per docker data root, then cached there:
#   DOCKER_HOST=unix:///path/docker.sock bash docker/base.sh [tag]
# Debian bookworm (debootstrap, minbase) plus this machine's CPython 3.12 at the same path, with
# PATH set as the official image sets it, and this machine's CA bundle as the system bundle so
# that pip and uv inside a build trust what this machine trusts. The CA bundle lives in this
# stand-in only, never in the Dockerfile. README.md, "Docker", says why.
set -euo pipefail
tag=${1:-python:3.12-slim}
docker=${DOCKER:-/usr/bin/docker}
if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "base: $tag is cached"
  exit 0
fi
python=$(uv python find 3.12)
prefix=$("$python" -c 'import sys; print(sys.base_prefix)')
# The mirror apt already uses here (deb822 or one-line sources), or DEBIAN_MIRROR.
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
mirror=${mirror:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
if [ -z "$mirror" ]; then
  echo "base: no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2
  exit 1
fi
root=$(mktemp -d /tmp/filegate-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
started=$SECONDS
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# CPython at the same path (its venvs point there); its own site-packages but pip left behind
mkdir -p "$root$prefix"
tar -C "$prefix" --exclude='./lib/python3.12/test' --exclude='./lib/python3.12/site-packages/*' -c . \
  | tar -C "$root$prefix" -x
cp -a "$prefix/lib/python3.12/site-packages/pip" "$prefix"/lib/python3.12/site-packages/pip-*.dist-info \
  "$root$prefix/lib/python3.12/site-packages/"
dir=$prefix
while [ "$dir" != / ]; do chmod o+rx "$root$dir"; dir=$(dirname "$dir"); done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
tar -C "$root" -c . | "$docker" import \
  --change "ENV PATH=$prefix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change 'ENV LANG=C.UTF-8' --change 'ENV UV_NATIVE_TLS=1' --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
echo "base: built $tag in $((SECONDS - started)) s from $mirror and $prefix"
