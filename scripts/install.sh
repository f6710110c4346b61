#!/usr/bin/env bash
# Install what sandbank needs, idempotently: Debian packages from the host's own
# configured suites (no other suite is ever added), and a virtualenv at .venv
# with pinned Python dependencies. Usage: scripts/install.sh [server|test|bench]
set -euo pipefail

profile="${1:-server}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ "$(id -u)" -ne 0 ]; then
  echo "sandbank needs root (it creates namespaces, mounts and cgroups); run as root" >&2
  exit 1
fi

apt_packages=(runc debootstrap e2fsprogs util-linux mount iproute2 nftables procps python3 python3-venv python3-dev gcc skopeo umoci)
case "$profile" in
  test) apt_packages+=(tmux apt-utils openssl) ;;   # openssl: the fake internet's test CA
  bench) apt_packages+=(podman openssl) ;;
esac

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# CRIU (hibernate/wake, fork): a working one, or the pinned build; never fatal.
scripts/criu.sh

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

extras="server"
[ "$profile" = "server" ] || extras="server,test"
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The browser terminal's xterm.js: pinned and integrity-checked, from the npm registry.
.venv/bin/python scripts/fetch_xterm.py
