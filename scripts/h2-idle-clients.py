#!/usr/bin/env python3
"""h2-idle-clients.py HOST:PORT N — opens N idle HTTP/2 (h2c) connections, each through its
preface and SETTINGS exchange (and one request answered, so the server has set up all its
per-connection state), holds them until stdin closes, and prints how many are open."""
import socket
import sys

import h2.config
import h2.connection

host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.create_connection((host, int(port)), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "idle.test")],
                   end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        data = s.recv(65535)
        if not data:
            raise SystemExit(f"connection {i} closed")
        for e in c.receive_data(data):
            done |= type(e).__name__ in ("StreamEnded", "StreamReset")
        s.sendall(c.data_to_send())
    conns.append((s, c))
print(f"{len(conns)} open", flush=True)
sys.stdin.read()
