#!/usr/bin/env bash
# CRIU for hibernate/wake and fork (checkpoint/restore of sandboxes), idempotently.
#
# A criu that passes `criu check` on this kernel is used as it is (from PATH).
# Otherwise (Debian 12's criu 3.17 fails on newer kernels: "Failed to fill self
# vdso symtable"), the pinned upstream 4.1.1 tarball is fetched from the host's
# own Debian mirror, verified, built, and installed as .cache/criu/bin/criu,
# where the runtime finds it and hands it to runc (`runc --criu PATH`). The
# build's -dev packages come from the host's configured suites. The patches in
# scripts/criu-patches/ are applied first (see each file: fixes for newer
# kernels than the release knew).
#
# Never fatal: without a working criu the server still runs, and hibernate/fork
# answer an error that says why. Usage: scripts/criu.sh [--force]
set -uo pipefail

version="4.1.1"
tarball="criu_${version}.orig.tar.xz"
sha256="f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe"
# What `make criu` of 4.1.1 needs on Debian 12, and no more (found by building
# on a clean host): libnftables, libbsd and GnuTLS are optional and left out.
build_packages=(gcc make patch pkg-config libc6-dev uuid-dev libnet1-dev libnl-3-dev libcap-dev
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler xz-utils curl iptables)

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/criu"
bin="$cache/bin/criu"
patches=("$root"/scripts/criu-patches/*.patch)
# criu caches what it learns about the kernel (~50 ms a run) in RUNDIR, but only
# on a tmpfs; where /run is not one, a root-only directory in /dev/shm is used
# (the runtime creates it and checks it before every use: runtime/linux/criu.py).
rundir=/run
[ "$(stat -f -c %T /run 2>/dev/null)" = tmpfs ] || rundir=/dev/shm/sandbank-criu
# What the installed build was made from: the tarball, the patches, RUNDIR.
build_id="$( (echo "$sha256 $rundir"; cat "${patches[@]}") | sha256sum | cut -c1-16)"

say() { echo "criu: $*" >&2; }

passes_check() {
  "$1" check >/dev/null 2>&1
}

if [ "${1:-}" != "--force" ]; then
  if [ -x "$bin" ] && [ "$(cat "$bin.build" 2>/dev/null)" = "$build_id" ] && passes_check "$bin"; then
    say "using $bin ($("$bin" --version | head -1))"
    exit 0
  fi
  # A packaged criu lacks the fixes in scripts/criu-patches/ even when `criu
  # check` passes: only a release newer than the one built here is taken as it is.
  if system="$(command -v criu)" && passes_check "$system" \
    && [ "$(printf '%s\n' "$("$system" --version | awk '/^Version/ {print $2}')" "4.2" | sort -V | head -1)" = "4.2" ]; then
    say "using $system: it passes 'criu check'"
    exit 0
  fi
  [ -n "${system:-}" ] && say "$system fails 'criu check' on this kernel or is not newer than $version; building criu $version"
fi

debian_mirror() {
  # The host's main Debian archive: a deb822 URIs line or a one-line `deb` entry
  # whose URL ends in /debian (not debian-security).
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i=2;i<=NF;i++) print $i}' \
    | grep -E '/debian/?$' | head -1)"
  if [ -z "$uri" ]; then
    uri="$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      | sed -E 's/\[[^]]*\]//' | awk '{print $2}' | grep -E '/debian/?$' | head -1)"
  fi
  echo "${uri%/}"
}

fail() {
  say "FAILED: $*"
  say "the server runs without it; hibernate, wake and fork will answer an error"
  exit 0
}

missing=()
for pkg in "${build_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing build packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
fi

mkdir -p "$cache"
if ! echo "$sha256  $cache/$tarball" | sha256sum -c --status 2>/dev/null; then
  mirror="$(debian_mirror)"
  [ -n "$mirror" ] || fail "no Debian mirror found in the apt sources"
  url="$mirror/pool/main/c/criu/$tarball"
  say "downloading $url"
  curl -fsSL --retry 2 -o "$cache/$tarball.part" "$url" || fail "download of $url"
  echo "$sha256  $cache/$tarball.part" | sha256sum -c --status \
    || { rm -f "$cache/$tarball.part"; fail "$tarball does not have the pinned sha256 $sha256"; }
  mv "$cache/$tarball.part" "$cache/$tarball"
fi

src="$cache/criu-$version"
rm -rf "$src"
tar -C "$cache" -xJf "$cache/$tarball" || fail "unpacking $tarball"
for patch in "${patches[@]}"; do
  [ -f "$patch" ] || continue
  patch -d "$src" -p1 -s <"$patch" || fail "applying $(basename "$patch")"
done
say "building criu $version (about 20 s on 2 cores; log: $cache/build.log)"
if ! make -C "$src" -j"$(nproc)" NO_GNUTLS=1 RUNDIR="$rundir" criu >"$cache/build.log" 2>&1; then
  tail -5 "$cache/build.log" >&2
  fail "make criu (see $cache/build.log)"
fi
mkdir -p "$cache/bin"
if [ "$rundir" != /run ]; then
  mkdir -p -m 0700 "$rundir"
fi
install -m 0755 "$src/criu/criu" "$bin.new" && mv "$bin.new" "$bin"
echo "$build_id" >"$bin.build"
rm -rf "$src"
if out="$("$bin" check 2>&1)"; then
  say "installed $bin: $out"
else
  echo "$out" | tail -3 >&2
  fail "the built criu fails 'criu check'"
fi
