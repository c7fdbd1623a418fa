#!/usr/bin/env bash
# Install the Debian packages given as arguments, only those not installed yet.
# A package this Debian release does not have is named, with the release, and the
# script fails: criplex supports Debian 12 and 13, whose package sets differ.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
release=$(. /etc/os-release && echo "${PRETTY_NAME:-unknown}")
apt-get update -qq
unavailable=()
for pkg in "${missing[@]}"; do
  candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    unavailable+=("$pkg")
  fi
done
if [ ${#unavailable[@]} -gt 0 ]; then
  echo "criplex: these Debian packages are not available on $release: ${unavailable[*]}" >&2
  echo "criplex: needed: ${missing[*]}; install the unavailable ones from another source first" >&2
  exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
