#!/usr/bin/env python3
"""A minimal CQL client (native protocol v4, TLS, PasswordAuthenticator) for cassandra.sh secure-start.

There is no cqlsh here (no Python driver, no Docker): this speaks just enough of the protocol to
log in and run a few statements, e.g. to create the test role.

    cql.py HOST PORT CA_FILE SERVER_NAME USER PASSWORD_FILE TIMEOUT_S STATEMENT...

Retries the login (the default superuser role appears a moment after the node listens) until
TIMEOUT_S; then runs each STATEMENT in order and exits 1 on the first error, printing it.
The password is read from PASSWORD_FILE (trailing newline trimmed) and never printed.
"""
import socket
import ssl
import struct
import sys
import time

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_QUERY, OP_RESULT, OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x07, 0x08, 0x0F, 0x10


def frame(opcode, body, stream=1):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def read_frame(sock):
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", read_exact(sock, 9))
    return opcode, read_exact(sock, length)


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def long_string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def error_text(body):
    code = struct.unpack(">i", body[:4])[0]
    n = struct.unpack(">H", body[4:6])[0]
    return "error 0x%04x: %s" % (code, body[6 : 6 + n].decode(errors="replace"))


def login(host, port, ca, server_name, user, password):
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((host, port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=server_name)
    sock.sendall(frame(OP_STARTUP, struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0")))
    op, body = read_frame(sock)
    if op == OP_AUTHENTICATE:
        token = b"\0" + user.encode() + b"\0" + password.encode()
        sock.sendall(frame(OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token))
        op, body = read_frame(sock)
        if op != OP_AUTH_SUCCESS:
            sock.close()
            raise PermissionError(error_text(body) if op == OP_ERROR else "opcode %d" % op)
    elif op != OP_READY:
        sock.close()
        raise ConnectionError(error_text(body) if op == OP_ERROR else "opcode %d" % op)
    return sock


def query(sock, cql):
    # consistency ONE (0x0001), no flags
    sock.sendall(frame(OP_QUERY, long_string(cql) + struct.pack(">HB", 0x0001, 0)))
    op, body = read_frame(sock)
    if op == OP_ERROR:
        raise RuntimeError(error_text(body))
    if op != OP_RESULT:
        raise RuntimeError("unexpected opcode %d" % op)


def main():
    host, port, ca, server_name, user, password_file, timeout = sys.argv[1:8]
    statements = sys.argv[8:]
    with open(password_file) as f:
        password = f.read().rstrip("\r\n")
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            sock = login(host, int(port), ca, server_name, user, password)
            break
        except (OSError, PermissionError, ConnectionError) as e:
            if time.monotonic() >= deadline:
                print("cql.py: could not log in as %s within %ss: %s" % (user, timeout, e), file=sys.stderr)
                return 1
            time.sleep(1)
    for cql in statements:
        # Retry briefly: right after start-up the auth tables may still be settling.
        for attempt in range(20):
            try:
                query(sock, cql)
                break
            except RuntimeError as e:
                if attempt == 19 or time.monotonic() >= deadline:
                    print("cql.py: %s failed: %s" % (cql.split(" PASSWORD")[0], e), file=sys.stderr)
                    return 1
                time.sleep(1)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
