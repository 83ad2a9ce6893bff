#!/bin/sh
# Wait until something listens on each loopback port given (the gateways need PostgreSQL and Redis).
for port in "$@"; do
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null; do
    sleep 0.5
  done
done
