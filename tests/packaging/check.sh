#!/bin/sh
# Debian packaging check (issue 16), run by scripts/test.sh after distcheck:
#   tests/packaging/check.sh [TARBALL]
# Builds the binary packages from TARBALL (the dist tarball; default: the files of this
# checkout) with dpkg-buildpackage -us -uc -b, checks them with lintian (errors fail), checks
# every plugin package depends only on what its plugin links, installs them with dpkg -i,
# trains the packaged examples/train on the local target with the installed command, removes
# ctarget-plugin-remotevm and checks `ctarget plugins` without it, builds tests/oot/acmehpc.c
# against the installed libctarget-dev alone and loads it, and purges every package it
# installed (also on failure or interrupt: the machine is left as found).
# Needs root for dpkg -i (CI is root; otherwise sudo). Prints `packaging: N passed, M failed`.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
tarball=${1:-}
started=$(date +%s)
passes=0 fails=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*" >&2; }
finish() {
    echo "packaging: $passes passed, $fails failed ($(($(date +%s) - started)) s)"
    [ "$fails" = 0 ]
    exit
}
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=/usr/lib/$ma
plugindir=$libdir/ctarget/plugins

# dpkg_do ARGS: dpkg as root; waits (bounded: 2 minutes) while another dpkg or apt holds
# its lock, which only a shared machine sees
dpkg_do() {
    n=0
    while :; do
        if out=$($sudo dpkg "$@" 2>&1); then
            printf '%s\n' "$out" >>"$work/dpkg.log"
            return 0
        fi
        case $out in
            *"locked by another process"* | *"status database is locked"*)
                n=$((n + 1))
                [ "$n" -le 60 ] && { sleep 2; continue; } ;;
        esac
        printf '%s\n' "$out" >&2
        return 1
    done
}

# ---- the machine as found; cleanup purges exactly what this script installed ------------
work=$(mktemp -d "${TMPDIR:-/tmp}/ctarget-packaging.XXXXXX")
installed=""
cleanup() {
    if [ -n "$installed" ]; then
        # shellcheck disable=SC2086
        dpkg_do --purge $installed ||
            echo "packaging: could not purge:$installed (remove them with dpkg --purge)" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'bad "interrupted"; finish' INT TERM HUP
chmod 0755 "$work"

# ---- source tree -------------------------------------------------------------------------
if [ -n "$tarball" ]; then
    tar -xzf "$tarball" -C "$work" || { bad "cannot unpack $tarball"; finish; }
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'ctarget-*' | head -n 1)
else
    src=$work/ctarget-$(sed -n 's/^AC_INIT(\[ctarget\], \[\([^]]*\)\].*/\1/p' "$top/configure.ac")
    mkdir "$src"
    (cd "$top" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src") ||
        { bad "cannot copy the checkout (git ls-files in $top)"; finish; }
fi
[ -n "$src" ] && [ -f "$src/debian/control" ] && ok "source has debian/ (${tarball:-checkout})" ||
    { bad "no debian/control in ${tarball:-the checkout} (debian/ missing from EXTRA_DIST?)"; finish; }

pkgs=$(sed -n 's/^Package: *//p' "$src/debian/control")
plugins=$(printf '%s\n' $pkgs | sed -n 's/^ctarget-plugin-//p')
for p in $pkgs; do
    if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
        bad "$p is already installed here: purge it first (dpkg --purge $p); nothing was changed"
        finish
    fi
done

# every plugin configure.ac knows has its package (a stanza and a one-line .install), and
# every plugin package is a plugin configure knows: a plugin that is off by default would
# otherwise be left out without dh_missing seeing it
known=$(sed -n 's/^CTARGET_PLUGIN(\[\([a-z0-9_]*\)\].*/\1/p' "$src/configure.ac" | sort)
for p in $known; do
    printf '%s\n' $plugins | grep -qx "$p" && [ -f "$src/debian/ctarget-plugin-$p.install" ] &&
        ok "plugin $p has its package ctarget-plugin-$p" ||
        bad "plugin $p has no package: add a ctarget-plugin-$p stanza to debian/control and debian/ctarget-plugin-$p.install (see the comment there)"
done
for p in $plugins; do
    printf '%s\n' $known | grep -qx "$p" ||
        bad "debian/control has ctarget-plugin-$p but configure.ac has no CTARGET_PLUGIN([$p])"
done

ver=$(sed -n 's/^AC_INIT(\[ctarget\], \[\([^]]*\)\].*/\1/p' "$src/configure.ac")
debver=$(cd "$src" && dpkg-parsechangelog -S Version)
[ "$debver" = "$ver" ] && ok "debian/changelog version $debver = configure.ac's" ||
    bad "debian/changelog says $debver, configure.ac $ver: add a changelog entry (dch -v $ver)"

# ---- build -------------------------------------------------------------------------------
# the source package too, from the pristine tree, so lintian sees debian/ itself
t0=$(date +%s)
if (cd "$work" && dpkg-source -b "$(basename "$src")" >"$work/source.log" 2>&1); then
    ok "dpkg-source -b ($(($(date +%s) - t0)) s)"
else
    cat "$work/source.log" >&2
    bad "dpkg-source -b failed (log above)"
fi
t0=$(date +%s)
if (cd "$src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" \
        dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1); then
    ok "dpkg-buildpackage -us -uc -b ($(($(date +%s) - t0)) s)"
else
    tail -n 40 "$work/build.log" >&2
    grep '^dh_missing: warning:' "$work/build.log" >&2
    bad "dpkg-buildpackage -us -uc -b failed (log above)"
    finish
fi
# public symbols added since debian/libctarget0.symbols was written (not an error: list them)
if grep -q 'new symbols appeared' "$work/build.log"; then
    echo "note: libctarget exports symbols debian/libctarget0.symbols does not list (add them with their version):"
    grep '^+ ' "$work/build.log" | sed 's/^/note:   /'
fi
# the package build's test run stays usable when nocheck is not given (one program here:
# the whole suite runs in the other steps)
t0=$(date +%s)
if (cd "$src" && DEB_BUILD_OPTIONS="parallel=$(nproc)" \
        dh_auto_test -- TESTS=tests/test_loader >"$work/test.log" 2>&1) &&
        grep -q '^PASS: tests/test_loader' "$work/test.log"; then
    ok "dh_auto_test runs make check in the package build ($(($(date +%s) - t0)) s)"
else
    tail -n 30 "$work/test.log" >&2
    bad "dh_auto_test (make check TESTS=tests/test_loader) in the package build failed"
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
debs=""
for p in $pkgs; do
    f=$work/${p}_${debver}_$arch.deb
    [ -f "$f" ] && debs="$debs $f" || bad "no package file $f"
done
[ -n "$plugins" ] && ok "plugin packages:$(printf ' ctarget-plugin-%s' $plugins)" ||
    bad "debian/control declares no ctarget-plugin-* package"

# ---- lintian -----------------------------------------------------------------------------
t0=$(date +%s)
dsc=$work/ctarget_$debver.dsc
[ -f "$dsc" ] || dsc=""
lint=$(lintian --fail-on error --pedantic "$work/ctarget_${debver}_$arch.changes" $dsc 2>&1)
lrc=$?
lint=$(printf '%s\n' "$lint" | grep -v '^running with root privileges')
[ -n "$lint" ] && printf '%s\n' "$lint"
nerr=$(printf '%s\n' "$lint" | grep -c '^E:')
nwarn=$(printf '%s\n' "$lint" | grep -c '^W:')
[ "$lrc" = 0 ] && [ "$nerr" = 0 ] &&
    ok "lintian: no errors, $nwarn warnings ($(($(date +%s) - t0)) s)" ||
    bad "lintian: $nerr errors (exit $lrc)"

# ---- dependencies: each package depends on what it links, nothing else ------------------
# owner SONAME: the package holding the library the dynamic loader would find for SONAME
owner() {
    for d in "/lib/$ma" "/usr/lib/$ma" /lib /usr/lib; do
        o=$(dpkg-query -S "$d/$1" 2>/dev/null | sed -n '1s/:.*//p')
        [ -n "$o" ] && { echo "$o"; return; }
    done
}
# depnames DEB: the package names in its Depends, without versions or alternatives
depnames() {
    dpkg-deb -f "$1" Depends | tr ',|' '\n\n' | sed 's/(.*//; s/:any//; s/ //g' | sed '/^$/d'
}
for p in $plugins; do
    deb=$work/ctarget-plugin-${p}_${debver}_$arch.deb
    [ -f "$deb" ] || continue
    x=$work/x-$p
    dpkg-deb -x "$deb" "$x"
    files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | grep -v '^\./usr/share/doc/')
    [ "$files" = "./usr/lib/$ma/ctarget/plugins/$p.so" ] &&
        ok "ctarget-plugin-$p holds $plugindir/$p.so and nothing else" ||
        bad "ctarget-plugin-$p holds: $files"
    needed=$(readelf -d "$x/usr/lib/$ma/ctarget/plugins/$p.so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    want=$(for n in $needed; do owner "$n"; done | sort -u)
    have=$(depnames "$deb" | grep -v '^ctarget-plugin-abi-' | sort -u)
    [ "$want" = "$have" ] && ok "ctarget-plugin-$p depends on" $have "= the owners of what it links" ||
        bad "ctarget-plugin-$p depends on '$(echo $have)', it links $(echo $needed) ($(echo $want))"
    a=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -n 's/^ *\(ctarget-plugin-abi-.*\)/\1/p')
    case $a in
        "ctarget-plugin-abi-"[0-9]*" (>= "[0-9]*")") ok "ctarget-plugin-$p depends on the plugin ABI: $a" ;;
        *) bad "ctarget-plugin-$p does not depend on ctarget-plugin-abi-MAJOR (>= MINOR): '$a'" ;;
    esac
    case $needed in *libctarget*) bad "$p.so links libctarget" ;; esac
done
local_deb=$work/ctarget-plugin-local_${debver}_$arch.deb
if [ -f "$local_deb" ]; then
    dpkg-deb -f "$local_deb" Depends | grep -q ssh &&
        bad "ctarget-plugin-local depends on libssh2: $(dpkg-deb -f "$local_deb" Depends)" ||
        ok "ctarget-plugin-local does not depend on libssh2 ($(dpkg-deb -f "$local_deb" Depends))"
fi
lib_deb=$work/libctarget0_${debver}_$arch.deb
if [ -f "$lib_deb" ]; then
    abi=$(sed -n 's/^#define CTARGET_ABI_MAJOR \([0-9]*\).*/\1/p' "$src/include/ctarget/plugin.h")
    minor=$(sed -n 's/^#define CTARGET_ABI_MINOR \([0-9]*\).*/\1/p' "$src/include/ctarget/plugin.h")
    [ "$(dpkg-deb -f "$lib_deb" Provides)" = "ctarget-plugin-abi-$abi (= $minor)" ] &&
        ok "libctarget0 provides ctarget-plugin-abi-$abi (= $minor)" ||
        bad "libctarget0 provides '$(dpkg-deb -f "$lib_deb" Provides)', want ctarget-plugin-abi-$abi (= $minor)"
    # libraries the core links or dlopen()s (their sonames are strings in the library)
    dpkg-deb -x "$lib_deb" "$work/x-lib"
    so=$(find "$work/x-lib" -name 'libctarget.so.*.*' | head -n 1)
    sonames=$(strings "$so" | grep -E '^lib[A-Za-z0-9_+-]+\.so\.[0-9.]+$' | grep -v '^libctarget\.' |
              sort -u)
    have=$(depnames "$lib_deb")
    for n in $sonames; do
        o=$(owner "$n")
        [ -z "$o" ] && { bad "libctarget uses $n, which no installed package holds"; continue; }
        printf '%s\n' "$have" | grep -qx "$o" && ok "libctarget0 depends on $o (for $n)" ||
            bad "libctarget0 uses $n but does not depend on $o: add it to its Depends"
    done
fi

# ---- install -----------------------------------------------------------------------------
installed=$(for f in $debs; do dpkg-deb -f "$f" Package; done | tr '\n' ' ')
# shellcheck disable=SC2086
if dpkg_do -i $debs; then
    ok "dpkg -i $installed"
else
    bad "dpkg -i failed (output above)"
    finish
fi
ct=/usr/bin/ctarget
unset CTARGET_PLUGIN_PATH CTARGET_PLUGINDIR
CTARGET_WORKSPACE=$work/ws
export CTARGET_WORKSPACE
[ "$(dpkg-query -S "$ct" 2>/dev/null | sed 's/:.*//')" = ctarget ] && ok "$ct is from the ctarget package" ||
    bad "$ct not from the ctarget package"
for f in /usr/share/man/man1/ctarget.1.gz /usr/share/man/man7/ctarget-plugin.7.gz \
         "$libdir/libctarget.so" "$libdir/pkgconfig/ctarget.pc" "$libdir/pkgconfig/ctarget-plugin.pc"; do
    [ -e "$f" ] && ok "installed $f ($(dpkg-query -S "$f" | sed 's/:.*//'))" || bad "$f not installed"
done
bash -c '. /usr/share/bash-completion/completions/ctarget && complete -p ctarget' >/dev/null 2>&1 &&
    ok "bash completion registers ctarget" || bad "bash completion for ctarget does not load"

plist=$("$ct" plugins --output json 2>&1 | tr -d '\n ')
for p in $plugins; do
    printf '%s' "$plist" | grep -q "\"name\":\"$p\",[^}]*\"path\":\"$plugindir/$p.so\",\"status\":\"loaded\"" &&
        ok "installed ctarget loads $p from $plugindir" || bad "$p not loaded from $plugindir: $plist"
done

# ---- the packaged example on local, with the installed command, plugin and run monitor --
mkdir -p "$work/ws" && chmod 0700 "$work/ws"
t0=$(date +%s)
example=/usr/share/doc/ctarget/examples/train
[ -f "$example/train.py" ] && ok "the ctarget package installs $example" || bad "no $example/train.py"
if out=$(cd "$work" && "$ct" --output json run submit --target local --source "$example" \
        --script train.py --experiment packaging --wait -- --epochs 3 2>&1); then
    id=$(printf '%s\n' "$out" | sed -n 's/^ *"id": "\([^"]*\)".*/\1/p' | head -n 1)
    st=$("$ct" --output json run show "$id" 2>&1 | sed -n 's/^ *"status": "\([^"]*\)".*/\1/p' | head -n 1)
    [ "$st" = Completed ] && ok "the packaged example on local: run $id Completed ($(($(date +%s) - t0)) s)" ||
        bad "run $id ended '$st': $out"
    # the script really trained: three epochs of loss logged through CTARGET_METRICS_FILE
    m=$("$ct" run metrics "$id" --output json 2>&1 | tr -d '\n ')
    n=$(printf '%s' "$m" | grep -o '"name":"loss"' | wc -l)
    [ "$n" = 3 ] && ok "run $id logged 3 loss values" || bad "run $id metrics: $m"
else
    bad "run submit --target local --wait failed: $out"
fi

# ---- remove one plugin package -----------------------------------------------------------
if dpkg_do -r ctarget-plugin-remotevm; then
    ok "dpkg -r ctarget-plugin-remotevm"
    [ ! -e "$plugindir/remotevm.so" ] && ok "remotevm.so gone" || bad "$plugindir/remotevm.so left behind"
    plist=$("$ct" plugins --output json 2>&1 | tr -d '\n ')
    case $plist in
        *'"name":"remotevm"'*) bad "ctarget plugins still lists remotevm: $plist" ;;
        *'"name":"local"'*'"status":"loaded"'*) ok "ctarget plugins lists local and not remotevm" ;;
        *) bad "ctarget plugins lost local too: $plist" ;;
    esac
else
    bad "dpkg -r ctarget-plugin-remotevm failed"
fi

# ---- a vendor plugin from the installed libctarget-dev alone -----------------------------
# only the installed .pc files, and the header the compiler reads is the packaged one
PKG_CONFIG_LIBDIR=$libdir/pkgconfig:/usr/share/pkgconfig
PKG_CONFIG_PATH=
export PKG_CONFIG_LIBDIR PKG_CONFIG_PATH
CC=${CC:-cc}
# shellcheck disable=SC2046 # pkg-config output is split on purpose
hdr=$($CC -M $(pkg-config --cflags ctarget-plugin) "$src/tests/oot/acmehpc.c" 2>&1 |
      tr ' \\' '\n\n' | grep '/ctarget/plugin\.h$')
[ "$hdr" = /usr/include/ctarget/plugin.h ] &&
    [ "$(dpkg-query -S "$hdr" 2>/dev/null | sed 's/:.*//')" = libctarget-dev ] &&
    ok "acmehpc.c compiles against $hdr from libctarget-dev" ||
    bad "acmehpc.c reads '$hdr', not libctarget-dev's /usr/include/ctarget/plugin.h"
if CC=$CC sh "$src/tests/oot/check.sh" "$src" /usr/bin "$libdir" "$work/oot"; then
    ok "tests/oot/check.sh against the installed packages (acmehpc.so built and loaded)"
else
    bad "tests/oot/check.sh against the installed packages"
fi
# and a library client through ctarget.pc
printf '#include <ctarget/ctarget.h>\n#include <stdio.h>\nint main(void) { puts(ctarget_version()); return 0; }\n' \
    >"$work/client.c"
# shellcheck disable=SC2046
if $CC -std=c11 -Wall -Werror $(pkg-config --cflags ctarget) -o "$work/client" "$work/client.c" \
        $(pkg-config --libs ctarget) && [ "$("$work/client")" = "$ver" ]; then
    ok "a program links -lctarget through ctarget.pc and runs"
else
    bad "a program built with pkg-config ctarget does not link or run"
fi

# ---- purge: nothing left -----------------------------------------------------------------
# shellcheck disable=SC2086
if dpkg_do --purge $installed; then
    left=$(for p in $installed; do dpkg-query -W -f='${db:Status-Status} ${Package}\n' "$p" 2>/dev/null; done |
           grep -v '^not-installed')
    [ -z "$left" ] && [ ! -e "$libdir/ctarget" ] && [ ! -e "$ct" ] && ok "purged every package" ||
        bad "after purge: $left $(ls -d "$libdir/ctarget" "$ct" 2>/dev/null)"
    installed=""
else
    bad "dpkg --purge $installed failed"
fi
finish
