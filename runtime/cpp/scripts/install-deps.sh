#!/usr/bin/env bash
# The Debian/Ubuntu packages runtime/cpp builds with. apt runs only when one is missing (root, or sudo).
set -euo pipefail
PACKAGES=(g++ cmake make ninja-build pkg-config nlohmann-json3-dev libstb-dev libssl-dev)
if ! command -v dpkg-query >/dev/null; then
  echo "runtime/cpp: not a Debian system; install a C++17 compiler, CMake >= 3.18, nlohmann-json, stb, OpenSSL" >&2
  exit 0
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=()
[ "$(id -u)" -ne 0 ] && SUDO=(sudo)
echo "runtime/cpp: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
