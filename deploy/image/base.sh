#!/usr/bin/env bash
# A base image for the Containerfile built from Debian's packages alone, for a machine that
# reaches no container registry (this project's CI): Debian bookworm, minimal, with Debian's
# Python 3.11, imported into Podman. Pass it as the Containerfile's base:
#
#   deploy/image/base.sh                          # -> localhost/winequality-base:bookworm
#   podman build --build-arg BASE=localhost/winequality-base:bookworm -t wine-quality .
#
# The base trusts this machine's CA bundle, so that a build on it reaches the package registries
# through whatever TLS proxy this machine trusts. Needs root, debootstrap and podman. Does
# nothing when the image exists already.
set -euo pipefail

image="${1:-localhost/winequality-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
bundle=/etc/ssl/certs/ca-certificates.crt

if podman image exists "$image"; then
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
cp "$bundle" "$root$bundle"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import \
    --change "ENV SSL_CERT_FILE=$bundle" \
    --change "ENV PIP_CERT=$bundle" \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
echo "built $image"
