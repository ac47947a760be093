#!/bin/sh
# Install the Debian packages ctarget needs to build and to run its test suite.
# Uses sudo when not root.  Skips apt-get entirely when everything is already there.
set -eu
pkgs="build-essential autoconf automake libtool pkg-config
      libsqlite3-dev libjansson-dev libcurl4-openssl-dev libssl-dev libarchive-dev
      libcunit1-dev python3 openssl binutils git
      libssh2-1-dev openssh-server openssh-client
      slurm-wlm munge iproute2"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
echo "ctarget: installing Debian packages:$missing" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
