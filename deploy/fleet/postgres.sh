#!/bin/sh
# PostgreSQL for deploy/fleet/Procfile, in the foreground: a data folder .fleet/postgres made on
# the first run (user chatforge, trust on loopback, a database named chatforge), port 5433.
# PostgreSQL refuses to run as root: run the Procfile as an ordinary user.
set -eu
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PATH="$PGBIN:$PATH"
DATA=.fleet/postgres
PORT=5433
OPTIONS="-p $PORT -k $PWD/.fleet -c listen_addresses=127.0.0.1"
if [ ! -d "$DATA" ]; then
  mkdir -p .fleet
  initdb -D "$DATA" -U chatforge --auth=trust -E UTF8 >/dev/null
  pg_ctl -D "$DATA" -o "$OPTIONS" -w start >/dev/null
  createdb -h 127.0.0.1 -p "$PORT" -U chatforge chatforge
  pg_ctl -D "$DATA" -w stop >/dev/null
fi
exec postgres -D "$DATA" $OPTIONS
