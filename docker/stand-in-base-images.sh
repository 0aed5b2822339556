#!/usr/bin/env bash
# STAND-IN BASE IMAGES FOR OFFLINE MACHINES. NOT THE OFFICIAL IMAGES.
#
#   docker/stand-in-base-images.sh python:3.11-slim redis:7.4-alpine nginx:1.27-alpine
#
# For each image named: nothing to do when the official image is here; otherwise it is pulled
# from its registry; only when that fails (no Docker Hub, as on this project's development and
# CI machines) is a stand-in made from Debian bookworm's own packages (debootstrap, then
# `docker import`) and tagged with the official name, so the Dockerfiles and the compose file
# build and run unchanged. A stand-in is not the image its tag names: Debian's Python 3.11 in
# /usr/bin (linked from /usr/local/bin), Debian's Redis 7.0 and nginx 1.22, not Alpine. It is
# labelled org.curatornet.stand-in, and so is every image built on it:
#   docker image inspect -f '{{index .Config.Labels "org.curatornet.stand-in"}}' IMAGE
# A stand-in is replaced by the official image whenever a later run can pull it, so that a
# machine that gets Docker Hub back builds on the real thing.
#
# Made once, the roots at the same time: the Debian roots are kept as tarballs in
# $CURATORNET_STAND_IN_CACHE (default ~/.cache/curatornet/stand-in) with the .debs they came
# from, so an engine that lost its images gets them back in seconds. Needs root, debootstrap and a Debian mirror
# ($DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

CACHE=${CURATORNET_STAND_IN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/curatornet/stand-in}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=org.curatornet.stand-in
# Bump when a recipe below changes, so that cached roots made by the old one are not reused.
RECIPES=1

say() { echo "stand-in-base-images: $*" >&2; }

# The Debian packages, the set-up inside the root and the image settings (`docker import -c`)
# that stand in for each official image, chosen by its repository name.
recipe() {
    case "$1" in
        python)
            # python:3.11-slim: python, python3 and pip on PATH in /usr/local/bin, no compiler,
            # pip allowed to install into the system Python (the official image has no
            # EXTERNALLY-MANAGED marker), useradd (passwd) as in Debian's own base.
            PACKAGES=python3.11,python3-venv,python3-pip,ca-certificates,passwd
            CHANGES=("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                "ENV LANG=C.UTF-8" 'CMD ["python3"]')
            ;;
        redis)
            # redis:*: redis-server and redis-cli; an entrypoint that, as the official one does,
            # turns protected mode off when no config file is given (otherwise Redis refuses
            # every client but localhost's).
            PACKAGES=redis-server
            CHANGES=("WORKDIR /data" "VOLUME /data" "EXPOSE 6379"
                'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["redis-server"]')
            ;;
        nginx)
            # nginx:*: conf.d/*.conf included in the http block, logs to the container's output,
            # and no Debian default site (which would claim port 80 as default_server).
            PACKAGES=nginx-light,wget
            CHANGES=("EXPOSE 80" 'CMD ["nginx", "-g", "daemon off;"]')
            ;;
        *)
            return 1
            ;;
    esac
}

set_up() {
    local kind=$1 root=$2
    case "$kind" in
        python)
            for name in python python3; do ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
            for name in pip pip3; do ln -sf /usr/bin/pip3 "$root/usr/local/bin/$name"; done
            rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
            ;;
        redis)
            mkdir -p "$root/data"
            cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official redis image's entrypoint: protected mode off without a config file.
set -e
if [ "$1" = redis-server ] && ! [ -f "${2:-}" ]; then
    set -- "$@" --protected-mode no
fi
exec "$@"
EOF
            chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
            ;;
        nginx)
            rm -f "$root/etc/nginx/sites-enabled/default"
            ln -sf /dev/stdout "$root/var/log/nginx/access.log"
            ln -sf /dev/stderr "$root/var/log/nginx/error.log"
            ;;
    esac
    # The machine's CA bundle: where a proxy re-signs TLS, pip inside the build needs it.
    if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ -d "$root/etc/ssl/certs" ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc \
        "$root"/usr/share/man "$root"/usr/share/locale
}

# In a subshell of its own: several roots are made at once, each cleaning up after itself.
make_root() (
    local kind=$1 tarball=$2 root
    recipe "$kind"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    # one package cache a root: debootstraps running at once would write the same files
    mkdir -p "$CACHE/debs-$kind"
    if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs-$kind" --include="$PACKAGES" \
        bookworm "$root" "$MIRROR" >"$tarball.log" 2>&1; then
        say "debootstrap for $kind failed; the end of $tarball.log:"
        tail -20 "$tarball.log" >&2
        exit 1
    fi
    set_up "$kind" "$root"
    tar -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
)

is_stand_in() {
    docker image inspect -f '{{json .Config.Labels}}' "$1" 2>/dev/null | grep -q "\"$LABEL\""
}

tarball_of() {
    local repository=${1%%:*}
    echo "$CACHE/${repository##*/}-bookworm-r$RECIPES.tar"
}

# 1. What cannot be had from a registry, and has no stand-in yet.
wanted=()
for image in "$@"; do
    if docker image inspect "$image" >/dev/null 2>&1 && ! is_stand_in "$image"; then
        continue  # the official image, pulled before
    fi
    if timeout 300 docker pull -q "$image" >/dev/null 2>&1; then
        say "$image: pulled the official image"
        continue
    fi
    if is_stand_in "$image"; then
        continue  # made before; still no registry
    fi
    repository=${image%%:*}
    recipe "${repository##*/}" || { say "$image cannot be pulled and has no stand-in recipe"; exit 1; }
    wanted+=("$image")
done
[ ${#wanted[@]} -gt 0 ] || exit 0

# 2. The Debian roots not cached yet, all at once (a minute or two each, mostly dpkg).
mkdir -p "$CACHE"
jobs=()
for image in "${wanted[@]}"; do
    tarball=$(tarball_of "$image")
    if [ ! -s "$tarball" ] && ! [[ " ${jobs[*]} " == *" $tarball "* ]]; then
        command -v debootstrap >/dev/null || { say "debootstrap is not installed"; exit 1; }
        repository=${image%%:*}
        say "debootstrap bookworm for $image from $MIRROR"
        make_root "${repository##*/}" "$tarball" &
        jobs+=("$!" "$tarball")
    fi
done
failed=0
for ((i = 0; i < ${#jobs[@]}; i += 2)); do
    wait "${jobs[i]}" || failed=1
done
[ "$failed" = 0 ] || exit 1

# 3. Each stand-in imported under the official name, labelled as what it is.
for image in "${wanted[@]}"; do
    repository=${image%%:*}
    recipe "${repository##*/}"
    tarball=$(tarball_of "$image")
    changes=()
    for change in "${CHANGES[@]}" \
        "LABEL $LABEL=\"Debian bookworm stand-in for $image, made by docker/stand-in-base-images.sh because it could not be pulled\""; do
        changes+=(-c "$change")
    done
    docker import "${changes[@]}" "$tarball" "$image" >/dev/null
    say "$image could not be pulled: tagged a STAND-IN made from Debian packages ($tarball)"
done
