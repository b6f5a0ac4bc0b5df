#!/usr/bin/env bash
# Makes `docker.io/library/python:3.11-slim` exist in local podman storage without a registry,
# so the project's Dockerfile builds unchanged with `podman build --pull=never`:
#   1. debootstrap --variant=minbase bookworm from the host's own Debian mirror, trimmed like
#      Debian's slim images (no docs, man pages or locales), imported as a one-layer image;
#   2. Containerfile.base on top: python3, pip, venv, the host's extra CA certificates and the
#      host's pip index settings.
# Idempotent: each step is skipped when its image exists and was built from the same inputs.
# SIDECACHE_REBUILD_BASE=1 forces both steps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/podman/env.sh
. "$here/env.sh"

BASE_TAG="docker.io/library/python:3.11-slim"
ROOTFS_TAG="localhost/sidecache-bookworm-minbase:latest"
SUITE="bookworm"
TMP_DIRS=()
cleanup() { [ "${#TMP_DIRS[@]}" -eq 0 ] || rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT

# The first mirror the host's apt uses for $SUITE (deb822 .sources first, then one-line lists).
host_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        uri="$(awk -v suite="$SUITE" '
            function flush() {
                if (deb && ok && uri != "" && !found) { print uri; found = 1 }
                deb = 0; ok = 0; uri = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { flush() }' "$f")"
        if [ -n "$uri" ]; then echo "$uri"; return 0; fi
    done
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v suite="$SUITE" '
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
        }')" || true
    [ -n "$uri" ] && echo "$uri"
}

# pip settings for inside the image: the host's index and extra indexes (file:// ones are
# host-local paths and stay out), and the system CA bundle that holds the host's extra CAs.
host_pip_conf() {
    local index extra trusted
    index="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
    extra="${PIP_EXTRA_INDEX_URL:-$(python3 -m pip config get global.extra-index-url 2>/dev/null || true)}"
    trusted="${PIP_TRUSTED_HOST:-$(python3 -m pip config get global.trusted-host 2>/dev/null || true)}"
    extra="$(tr -s '[:space:]' '\n' <<<"$extra" | grep -v -e '^file:' -e '^$' | paste -sd ' ' || true)"
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    echo "disable-pip-version-check = true"
    case "$index" in ''|file:*) ;; *) echo "index-url = $index" ;; esac
    [ -n "$extra" ] && echo "extra-index-url = $extra"
    [ -n "$trusted" ] && echo "trusted-host = $trusted"
    return 0
}

image_label() {
    podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true
}

build_rootfs_image() {
    local mirror="$1" dir
    dir="$(mktemp -d "$SIDECACHE_PODMAN_STATE/rootfs.XXXXXX")"
    TMP_DIRS+=("$dir")
    log "debootstrap --variant=minbase $SUITE from the host's mirror (about a minute)"
    if ! debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$dir" "$mirror" \
        >"$SIDECACHE_PODMAN_STATE/debootstrap.log" 2>&1; then
        tail -n 20 "$SIDECACHE_PODMAN_STATE/debootstrap.log" >&2
        return 1
    fi
    # What Debian's slim images leave out; dpkg keeps leaving it out for later installs.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
    find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$dir"/usr/share/{man,info,locale,lintian}/* "$dir"/var/cache/apt/*.bin \
        "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log
    tar --numeric-owner -C "$dir" -c . \
        | podman import --quiet --change 'CMD ["bash"]' \
            --change "LABEL sidecache.rootfs.mirror=$mirror" - "$ROOTFS_TAG" >/dev/null
    rm -rf "$dir"
}

main() {
    local mirror ctx inputs
    mirror="$(host_mirror)" || { log "no Debian $SUITE mirror found in /etc/apt"; exit 1; }
    if [ -n "${SIDECACHE_REBUILD_BASE:-}" ] \
        || [ "$(image_label "$ROOTFS_TAG" sidecache.rootfs.mirror)" != "$mirror" ]; then
        build_rootfs_image "$mirror"
        log "imported $ROOTFS_TAG"
    fi

    ctx="$(mktemp -d "$SIDECACHE_PODMAN_STATE/base-ctx.XXXXXX")"
    TMP_DIRS+=("$ctx")
    mkdir "$ctx/ca-certificates"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ctx/ca-certificates/"
    fi
    host_pip_conf >"$ctx/pip.conf"
    cp "$here/Containerfile.base" "$ctx/Containerfile"
    inputs="$( (podman image inspect --format '{{.Id}}' "$ROOTFS_TAG"; cd "$ctx" \
        && find . -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)"

    if [ -z "${SIDECACHE_REBUILD_BASE:-}" ] \
        && [ "$(image_label "$BASE_TAG" sidecache.base.inputs)" = "$inputs" ]; then
        log "$BASE_TAG is up to date (local stand-in): skipping"
        return 0
    fi
    log "building the local $BASE_TAG"
    podman build --quiet --pull=never --network host --format docker \
        --label "sidecache.base.inputs=$inputs" -t "$BASE_TAG" "$ctx" >/dev/null
    log "built $BASE_TAG"
}

main "$@"
