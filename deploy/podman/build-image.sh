#!/usr/bin/env bash
# Builds the project's Dockerfile with podman on a host without a Docker engine or a reachable
# container registry. The Dockerfile keeps its public `FROM python:3.11-slim`; base-image.sh
# provides that tag locally, hence --pull=never. --network host lets pip inside the build reach
# the host's package index; --format docker keeps the HEALTHCHECK (OCI images drop it).
#   deploy/podman/build-image.sh            # tag from SIDECACHE_IMAGE, default localhost/sidecache:dev
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=deploy/podman/env.sh
. "$here/env.sh"

image="${SIDECACHE_IMAGE:-localhost/sidecache:dev}"
build_log="$SIDECACHE_PODMAN_STATE/build.log"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
t0="$(now_ms)"
"$here/base-image.sh"
t1="$(now_ms)"

log "podman build -t $image (log: $build_log)"
if ! podman build --pull=never --network host --format docker --layers \
    -t "$image" -f "$repo/Dockerfile" "$repo" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    log "podman build failed"
    exit 1
fi
t2="$(now_ms)"
# Tag the builder stage too (fully cached, well under a second), so that pruning this image's
# superseded layers keeps the dependency layers that the next build reuses. Only images that
# carry the Dockerfile's title label are pruned.
podman build --quiet --pull=never --network host --format docker --layers --target builder \
    -t "${image%:*}-builder:cache" -f "$repo/Dockerfile" "$repo" >/dev/null
podman image prune --force --filter "label=org.opencontainers.image.title=sidecache" >/dev/null

size="$(podman image inspect --format '{{.Size}}' "$image")"
printf '[deploy] base image %d.%01d s, image build %d.%01d s, %s = %d.%01d MB\n' \
    $(((t1 - t0) / 1000)) $(((t1 - t0) % 1000 / 100)) $(((t2 - t1) / 1000)) \
    $(((t2 - t1) % 1000 / 100)) "$image" $((size / 1000000)) $((size % 1000000 / 100000)) >&2
