#!/bin/sh
# Out-of-tree plugin check, run by `make installcheck` (and therefore `make distcheck`)
# against the INSTALLED tree: a vendor builds acmehpc.so from the installed headers and
# ctarget-plugin.pc alone, and the installed ctarget loads and uses it.
#   check.sh SRCDIR BINDIR LIBDIR WORKDIR
set -eu
srcdir=$1 bindir=$2 libdir=$3 work=$4
CC=${CC:-cc}
fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*" >&2; }

rm -rf "$work" && mkdir -p "$work/plugins" "$work/ws"
chmod 0755 "$work" "$work/plugins"
PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
unset CTARGET_PLUGIN_PATH CTARGET_PLUGINDIR
CTARGET_WORKSPACE="$work/ws"
export CTARGET_WORKSPACE

cflags=$(pkg-config --cflags ctarget-plugin)
plugindir=$(pkg-config --variable=plugindir ctarget-plugin)
abi=$(pkg-config --variable=abi ctarget-plugin)
[ "$abi" = 1 ] && ok "ctarget-plugin.pc declares abi=1" || bad "abi variable is '$abi'"
[ -f "$plugindir/local.so" ] && ok "plugindir $plugindir holds local.so" \
    || bad "plugindir '$plugindir' from ctarget-plugin.pc has no local.so"

# The vendor's build: headers through pkg-config only, strict warnings, nothing linked.
if $CC -std=c11 -Wall -Wextra -Wpedantic -Werror -fPIC -shared -fvisibility=hidden \
        $cflags -o "$work/plugins/acmehpc.so" "$srcdir/tests/oot/acmehpc.c"; then
    ok "acmehpc.so builds from the installed headers"
else
    bad "acmehpc.so does not build with: $CC $cflags"
    exit 1
fi
if readelf -d "$work/plugins/acmehpc.so" | grep -q 'NEEDED.*libctarget'; then
    bad "acmehpc.so links libctarget"
else
    ok "acmehpc.so does not link libctarget"
fi
if readelf -d "$libdir"/libctarget.so | grep -q 'NEEDED.*libssh2'; then
    bad "installed libctarget links libssh2"
else
    ok "installed libctarget does not link libssh2"
fi

ct="$bindir/ctarget"
# Without any path override the installed command finds the installed plugins.
if "$ct" plugins --output json | grep -q "\"path\": \"$plugindir/local.so\""; then
    ok "installed ctarget loads local.so from its plugindir"
else
    bad "installed ctarget does not list $plugindir/local.so"
fi

CTARGET_PLUGIN_PATH="$work/plugins"
export CTARGET_PLUGIN_PATH
out=$("$ct" plugins --output json)
if printf '%s' "$out" | tr -d '\n ' | grep -q '"name":"acmehpc","path":"[^"]*","status":"loaded"'; then
    ok "vendor plugin listed as loaded"
else
    bad "vendor plugin not loaded: $out"
fi
ACME_TOKEN=tok-9f8e7d6c5b4a
export ACME_TOKEN
if "$ct" -q compute attach hpc1 --type acmehpc --set head_node=head01 \
        --set queue=GPU --set api_token=env:ACME_TOKEN; then
    ok "attach through the vendor plugin"
else
    bad "attach through the vendor plugin failed"
fi
show=$("$ct" compute show hpc1 --output json)
case $show in
    *'"scheduler": "acme-sched 4.2"'*) ok "facts recorded by the vendor plugin" ;;
    *) bad "facts missing: $show" ;;
esac
case $show in
    *tok-9f8e7d6c5b4a*) bad "secret printed by show" ;;
    *'"api_token": "env:ACME_TOKEN"'*) ok "secret reference shown, value not" ;;
    *) bad "api_token not shown as its reference: $show" ;;
esac
st=$("$ct" compute status hpc1 --output json) && case $st in
    *Idle*) ok "status through the vendor plugin" ;;
    *) bad "status: $st" ;;
esac
rc=0
"$ct" -q compute attach hpc2 --type acmehpc --set head_node=HEAD01 2>/dev/null || rc=$?
[ "$rc" = 5 ] && ok "second attachment of the same head node refused (exit 5)" \
    || bad "second attachment: exit $rc, want 5"
rc=0
"$ct" -q compute attach hpc3 --type acmehpc --set head_node=a/b 2>/dev/null || rc=$?
[ "$rc" = 3 ] && ok "vendor validate() refusal is exit 3" || bad "validate: exit $rc, want 3"

rm -rf "$work"
echo "out-of-tree plugin: $passes passed, $fails failed"
[ "$fails" = 0 ]
