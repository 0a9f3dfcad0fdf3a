#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the test suite.
#   bash scripts/postgres.sh start   -> prints the SQLAlchemy URL of an empty database
#   bash scripts/postgres.sh stop
# Needs root (it runs the server as the `postgres` user) and installs Debian's
# postgresql package when it is missing.
set -euo pipefail
dir="${TTC_PG_DIR:-/tmp/ttc-postgres}"
port="${TTC_PG_PORT:-55432}"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"
as_pg() { su postgres -s /bin/bash -c "$1"; }

case "${1:-start}" in
start)
  if [ -z "$bin" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
    bin="$(find_bin)"
  fi
  as_pg "$bin/pg_ctl -D $dir/data -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
  as_pg "$bin/initdb -D $dir/data -A trust -U postgres" >/dev/null
  # Members of ttc_password_login must give their password (the secrets tests create
  # such roles); everyone else is trusted.
  hba="$dir/data/pg_hba.conf"
  { echo "host all +ttc_password_login 127.0.0.1/32 scram-sha-256"; cat "$hba"; } > "$hba.new"
  mv "$hba.new" "$hba" && chown postgres "$hba"
  as_pg "$bin/pg_ctl -D $dir/data -o '-h 127.0.0.1 -p $port -k $dir' -l $dir/log -w start" >/dev/null
  as_pg "$bin/createdb -h 127.0.0.1 -p $port ttc_test"
  as_pg "$bin/psql -q -h 127.0.0.1 -p $port -d ttc_test -c 'CREATE ROLE ttc_password_login NOLOGIN'"
  echo "postgresql+psycopg://postgres@127.0.0.1:$port/ttc_test"
  ;;
stop)
  [ -n "$bin" ] && as_pg "$bin/pg_ctl -D $dir/data -m fast stop" >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
