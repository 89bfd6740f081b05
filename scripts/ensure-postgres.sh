#!/usr/bin/env bash
# Makes sure a Postgres server answers on 127.0.0.1:5432 for the Postgres test suites.
# Installs Debian's postgresql when missing and starts the cluster when stopped. The tests skip the
# Postgres suite (saying so) when no server answers, except under CI=true, where they fail.
set -uo pipefail
ready() { command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q; }
ready && exit 0
if ! command -v pg_ctlcluster >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ensure-postgres: installing postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 || true
  fi
fi
if command -v pg_ctlcluster >/dev/null; then
  for v in $(ls /etc/postgresql 2>/dev/null); do
    conf=/etc/postgresql/$v/main
    # trust auth on loopback, as the tests expect
    if [ -f "$conf/pg_hba.conf" ] && ! grep -q "sluice-ci" "$conf/pg_hba.conf"; then
      sed -i '1i host all all 127.0.0.1/32 trust # sluice-ci\nhost all all ::1/128 trust # sluice-ci' "$conf/pg_hba.conf"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
  done
  for _ in $(seq 30); do ready && break; sleep 1; done
  if ready; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || true
  fi
fi
ready && echo "ensure-postgres: postgres is up" >&2 || echo "ensure-postgres: no postgres on 127.0.0.1:5432" >&2
exit 0
