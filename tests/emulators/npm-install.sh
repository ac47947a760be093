#!/bin/sh
# npm-install.sh SRCDIR LINK
# Azurite and the official SDK for the tests, with `npm ci` from the committed lockfile
# (SRCDIR/package.json + package-lock.json), into a cache outside the source tree (which may
# be read-only: distcheck), keyed by the lockfile's hash and shared by every build dir:
#   ${CTARGET_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ctarget/azure-npm}/<hash>/node_modules
# LINK (a build-tree path) becomes a symbolic link to it.  Installs once; concurrent builds
# race safely (install in a scratch dir, then rename).
set -eu
src=$1
link=$2
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "npm-install.sh: node and npm are needed for the Azure tests (Azurite, the official SDK):" \
         "install them (scripts/install-deps.sh)" >&2
    exit 1
fi
hash=$(sha256sum "$src/package-lock.json" | cut -c1-16)
base=${CTARGET_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ctarget/azure-npm}
dest=$base/$hash
if [ ! -x "$dest/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$base"
    tmp=$(mktemp -d "$base/tmp.XXXXXX")
    cp "$src/package.json" "$src/package-lock.json" "$tmp/"
    chmod u+w "$tmp/package.json" "$tmp/package-lock.json"
    echo "npm-install.sh: npm ci (Azurite and the Azure SDK) into $dest" >&2
    if ! (cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2); then
        rm -rf "$tmp"
        echo "npm-install.sh: npm ci failed (see above)" >&2
        exit 1
    fi
    rm -rf "$dest.old"
    [ -d "$dest" ] && mv "$dest" "$dest.old"
    mv "$tmp" "$dest" || rm -rf "$tmp"
    rm -rf "$dest.old"
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$dest/node_modules" "$link"
