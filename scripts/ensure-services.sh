#!/usr/bin/env bash
# Makes sure the local PostgreSQL server the database tests use is up (it runs on loopback on
# the development and CI machines); a no-op when it already answers.
set -uo pipefail
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "[services] starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
  done
fi
echo "[services] PostgreSQL is not reachable on 127.0.0.1:5432; its tests will fail in CI" >&2
exit 0
