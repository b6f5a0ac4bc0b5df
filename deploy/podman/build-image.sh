#!/usr/bin/env bash
# Builds the project's Dockerfile with podman on a host without a Docker engine or a reachable
# container registry. The Dockerfile keeps its public `FROM python:3.11-slim`; base-image.sh
# provides that tag locally, hence --pull=never. --network host lets pip inside the build reach
# the host's package index; --format docker keeps the HEALTHCHECK (OCI images drop it).
#   deploy/podman/build-image.sh            # tag from SIDECACHE_IMAGE, default localhost/sidecache:dev
#   SIDECACHE_SEMANTIC=1 deploy/podman/build-image.sh   # the semantic variant, localhost/sidecache:semantic
# The semantic variant (build argument SEMANTIC=1) takes torch's CPU build from
# SIDECACHE_TORCH_INDEX (default download.pytorch.org/whl/cpu). When that index cannot be reached,
# it takes the wheel from a local directory instead, passed as the `torchwheels` build context:
# SIDECACHE_TORCH_WHEELS, else the first of pip's find-links directories that holds
# torch-$SIDECACHE_TORCH_VERSION (default 2.13.0) for CPython 3.11.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=deploy/podman/env.sh
. "$here/env.sh"

semantic="${SIDECACHE_SEMANTIC:-0}"
build_args=()
if [ "$semantic" = 1 ]; then
    image="${SIDECACHE_IMAGE:-localhost/sidecache:semantic}"
    builder_tag="${image%:*}-builder:semantic-cache"
    build_log="$SIDECACHE_PODMAN_STATE/build-semantic.log"
    torch_version="${SIDECACHE_TORCH_VERSION:-2.13.0}"
    torch_index="${SIDECACHE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    build_args+=(--build-arg SEMANTIC=1 --build-arg "TORCH_VERSION=$torch_version"
        --build-arg "TORCH_INDEX=$torch_index")
    wheels="${SIDECACHE_TORCH_WHEELS:-}"
    if [ -z "$wheels" ] && ! curl -fsS --max-time 10 -o /dev/null "$torch_index/torch/" 2>/dev/null; then
        # pip's find-links (this host's wheel directories), paths or file:// URLs.
        for dir in $(python3 -m pip config get global.find-links 2>/dev/null || true); do
            dir="${dir#file://}"
            if compgen -G "$dir/torch-${torch_version}[+-]*-cp311-*.whl" >/dev/null; then
                wheels="$dir"
                break
            fi
        done
        [ -n "$wheels" ] || {
            log "$torch_index is unreachable and no local torch-$torch_version wheel was found:"
            log "set SIDECACHE_TORCH_WHEELS to a directory that holds torch's CPU wheel"
            exit 1
        }
        log "$torch_index is unreachable: torch from $wheels"
    fi
    if [ -n "$wheels" ]; then
        build_args+=(--build-context "torchwheels=$(cd "$wheels" && pwd)")
    fi
else
    image="${SIDECACHE_IMAGE:-localhost/sidecache:dev}"
    builder_tag="${image%:*}-builder:cache"
    build_log="$SIDECACHE_PODMAN_STATE/build.log"
fi

now_ms() { echo $(($(date +%s%N) / 1000000)); }
t0="$(now_ms)"
"$here/base-image.sh"
t1="$(now_ms)"

log "podman build -t $image (log: $build_log)"
if ! podman build --pull=never --network host --format docker --layers "${build_args[@]}" \
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
    "${build_args[@]}" -t "$builder_tag" -f "$repo/Dockerfile" "$repo" >/dev/null
podman image prune --force --filter "label=org.opencontainers.image.title=sidecache" >/dev/null

size="$(podman image inspect --format '{{.Size}}' "$image")"
printf '[deploy] base image %d.%01d s, image build %d.%01d s, %s = %d.%01d MB\n' \
    $(((t1 - t0) / 1000)) $(((t1 - t0) % 1000 / 100)) $(((t2 - t1) / 1000)) \
    $(((t2 - t1) % 1000 / 100)) "$image" $((size / 1000000)) $((size % 1000000 / 100000)) >&2
