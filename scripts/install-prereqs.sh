#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks for Lifeboat's tests and
# local mode: PostgreSQL 15 server binaries and a Java runtime for the gcloud
# emulators. The emulators themselves cannot come from Debian's packages, so
# their absence is a clear failure instead.
set -euo pipefail

PG_BIN="${LIFEBOAT_PG_BIN:-/usr/lib/postgresql/15/bin}"
SDK="${LIFEBOAT_GCLOUD_SDK:-/usr/lib/google-cloud-sdk}"
missing_pkgs=()

[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/postgres" ] || missing_pkgs+=(postgresql-15)
command -v psql >/dev/null 2>&1 || missing_pkgs+=(postgresql-client-15)
command -v java >/dev/null 2>&1 || missing_pkgs+=(openjdk-17-jre-headless)

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  echo "prereqs: missing ${missing_pkgs[*]}; installing with apt-get" >&2
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
      echo "prereqs: not root and no sudo: run as root: apt-get update && apt-get install -y ${missing_pkgs[*]}" >&2
      exit 1
    fi
  else SUDO=""; fi
  # Keep the Debian package from starting its own cluster on :5432; tests make their own.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}"
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

fail=0
if ! ls "$SDK"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar >/dev/null 2>&1; then
  echo "prereqs: Pub/Sub emulator not found under $SDK/platform/pubsub-emulator: install the gcloud component pubsub-emulator (gcloud components install pubsub-emulator, or the google-cloud-cli-pubsub-emulator package from Google's apt repository), or set LIFEBOAT_GCLOUD_SDK to the SDK root" >&2
  fail=1
fi
if [ ! -f "$SDK/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" ]; then
  echo "prereqs: Firestore emulator not found under $SDK/platform/cloud-firestore-emulator: install the gcloud component cloud-firestore-emulator (gcloud components install cloud-firestore-emulator, or the google-cloud-cli-firestore-emulator package from Google's apt repository), or set LIFEBOAT_GCLOUD_SDK to the SDK root" >&2
  fail=1
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "prereqs: running as root needs the unprivileged 'postgres' OS user for initdb (apt-get install postgresql-15 creates it, or: useradd --system postgres)" >&2
  fail=1
fi
exit "$fail"
