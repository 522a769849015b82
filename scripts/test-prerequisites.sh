#!/usr/bin/env bash
# What `npm test` needs besides `npm ci`, made sure of before the tests start: npm
# runs it as the `pretest` script, and .ci/run calls it before `npm ci`.
#
# - Chromium, for the admin page's browser test (scripts/chromium.ts launches
#   CHROMIUM_PATH, by default /usr/bin/chromium). Missing: Debian's `chromium` is
#   installed with apt-get when this runs as root or with passwordless sudo
#   (waiting up to 5 minutes for another apt to let go of the dpkg lock); otherwise
#   it stops at once with the command to run.
# - Google's Firestore emulator and Java 17 or later, for the Firestore tests
#   (test/store/call-store.contract.test.ts, test/multi-instance.test.ts). Missing:
#   installed with apt-get the same way when the emulator's package can be had
#   (Google's Cloud SDK apt repository configured); if it cannot, those tests are
#   skipped, and with CI=true this stops instead, as the tests would fail.
#
# Usage: bash scripts/test-prerequisites.sh      Exit status non-zero on failure.
set -euo pipefail

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
# The path test/support/firestore-emulator.ts starts.
FIRESTORE_EMULATOR_BIN=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator
EMULATOR_PACKAGE=google-cloud-cli-firestore-emulator
JAVA_PACKAGE=openjdk-17-jre-headless
export DEBIAN_FRONTEND=noninteractive

say() { printf 'test-prerequisites: %s\n' "$*"; }
die() {
  printf 'test-prerequisites: %s\n' "$*" >&2
  exit 1
}

# How to run a command as root here: nothing, sudo, or not at all (status 1).
ROOT=""
if [[ "$(id -u)" == 0 ]]; then
  ROOT=direct
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  ROOT=sudo
fi
as_root() {
  case "$ROOT" in
    direct) "$@" ;;
    sudo) sudo -n --preserve-env=DEBIAN_FRONTEND "$@" ;;
    *) return 1 ;;
  esac
}

# Whether apt-get may install packages here; otherwise the command for the user to run.
can_install() { [[ -n "$ROOT" ]] && command -v apt-get >/dev/null; }
install_command() {
  if command -v apt-get >/dev/null; then
    echo "sudo apt-get install -y $*"
  else
    echo "(no apt-get here) install $* with the system's package manager"
  fi
}

APT_UPDATED=""
apt_install() {
  if [[ -z "$APT_UPDATED" ]]; then
    as_root apt-get -o DPkg::Lock::Timeout=300 update
    APT_UPDATED=1
  fi
  # --no-upgrade: a package already installed stays at its version.
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends --no-upgrade "$@"
}

# A package an apt source offers (madison lists sources, not what is installed).
available() { [[ -n "$(apt-cache madison "$1" 2>/dev/null)" ]]; }

java_version() { if command -v java >/dev/null; then java -version 2>&1 | head -n1; else echo "no java"; fi; }
java_17_or_later() {
  command -v java >/dev/null || return 1
  # `java -version` prints e.g. `openjdk version "17.0.15" 2025-04-15` on stderr.
  local major
  major="$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')"
  ((${major:-0} >= 17))
}

# ---- Chromium ----
if [[ ! -x "$CHROMIUM" ]]; then
  if ! can_install; then
    die "Chromium not found at $CHROMIUM (the admin page's browser test needs it). Run: $(install_command chromium)   (or set CHROMIUM_PATH to a Chromium binary)"
  fi
  say "Chromium not found at $CHROMIUM: installing Debian's chromium"
  apt_install chromium
  [[ -x "$CHROMIUM" ]] || die "apt-get install chromium did not provide $CHROMIUM (CHROMIUM_PATH): point CHROMIUM_PATH at the installed Chromium, or unset it"
fi

# ---- Firestore emulator and Java ----
if [[ ! -x "$FIRESTORE_EMULATOR_BIN" ]] && can_install && available "$EMULATOR_PACKAGE"; then
  say "Firestore emulator not found: installing $EMULATOR_PACKAGE"
  apt_install "$EMULATOR_PACKAGE"
fi
if [[ ! -x "$FIRESTORE_EMULATOR_BIN" ]]; then
  WHY="Firestore emulator not found at $FIRESTORE_EMULATOR_BIN. Run: $(install_command "$EMULATOR_PACKAGE" "$JAVA_PACKAGE")   (after adding Google's Cloud SDK apt repository: https://cloud.google.com/sdk/docs/install#deb)"
  # The same rule as the tests: any CI value makes a missing emulator a failure.
  [[ -z "${CI:-}" ]] || die "$WHY"
  say "$WHY; until then the Firestore tests are skipped"
elif ! java_17_or_later; then
  if ! can_install; then
    die "the Firestore emulator needs Java 17 or later, found: $(java_version). Run: $(install_command "$JAVA_PACKAGE")"
  fi
  say "the Firestore emulator needs Java 17 or later: installing $JAVA_PACKAGE"
  apt_install "$JAVA_PACKAGE"
  java_17_or_later || die "java is still older than 17 after apt-get install $JAVA_PACKAGE: $(java_version)"
fi
