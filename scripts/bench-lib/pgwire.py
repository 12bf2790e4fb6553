"""A minimal PostgreSQL wire-protocol client for the benchmarks.

Only what scripts/bench and scripts/bench-failover-pgpool need, with the
standard library alone: startup, authentication (trust, cleartext, md5,
SCRAM-SHA-256), simple queries. Blocking sockets for the writer; the
idle-connection holder drives the same handshake with asyncio.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct


class PgError(Exception):
    """An ErrorResponse from the server, or a protocol surprise."""

    def __init__(self, message, sqlstate=None):
        super().__init__(message)
        self.sqlstate = sqlstate


def startup_message(user, database, params=None):
    body = struct.pack("!I", 196608)
    fields = {"user": user, "database": database}
    fields.update(params or {})
    for k, v in fields.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(tag, payload):
    return tag + struct.pack("!I", len(payload) + 4) + payload


def parse_error(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return PgError(
        "%s: %s" % (fields.get("C", "?????"), fields.get("M", "unknown error")),
        fields.get("C"),
    )


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802/7677), no channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = "n=,r=" + self.nonce
        self.server_signature = None

    def client_first(self):
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        nonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise PgError("SCRAM: server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + nonce
        auth_message = ",".join([self.first_bare, server_first.decode(), without_proof]).encode()
        client_sig = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_message, "sha256").digest()
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()


class Handshake:
    """Startup and authentication as a state machine over received messages,
    so that blocking and asyncio callers share it. feed() returns bytes to
    send (possibly empty); `ready` turns true at ReadyForQuery."""

    def __init__(self, user, password):
        self.user = user
        self.password = password
        self.scram = None
        self.ready = False
        self.params = {}

    def feed(self, tag, payload):
        if tag == b"R":
            code = struct.unpack("!I", payload[:4])[0]
            if code == 0:
                return b""
            if self.password is None:
                raise PgError("server asks for a password (auth code %d) and none was given" % code)
            if code == 3:
                return message(b"p", self.password.encode() + b"\0")
            if code == 5:
                salt = payload[4:8]
                inner = hashlib.md5(self.password.encode() + self.user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                return message(b"p", b"md5" + outer.encode() + b"\0")
            if code == 10:
                mechanisms = payload[4:].split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise PgError("no supported SASL mechanism in %r" % mechanisms)
                self.scram = Scram(self.password)
                first = self.scram.client_first()
                body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
                return message(b"p", body)
            if code == 11:
                return message(b"p", self.scram.client_final(payload[4:]))
            if code == 12:
                attrs = dict(kv.split("=", 1) for kv in payload[4:].decode().split(","))
                if base64.b64decode(attrs.get("v", "")) != self.scram.server_signature:
                    raise PgError("SCRAM: wrong server signature")
                return b""
            raise PgError("unsupported authentication request %d" % code)
        if tag == b"E":
            raise parse_error(payload)
        if tag == b"S":
            k, v = payload.split(b"\0")[:2]
            self.params[k.decode()] = v.decode()
            return b""
        if tag == b"Z":
            self.ready = True
            return b""
        # BackendKeyData, NoticeResponse: nothing to answer.
        return b""


class Conn:
    """A blocking connection."""

    def __init__(self, host, port, user, database, password=None, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(startup_message(user, database))
        hs = Handshake(user, password)
        while not hs.ready:
            tag, payload = self.read_message()
            out = hs.feed(tag, payload)
            if out:
                self.sock.sendall(out)

    def read_message(self):
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + length:
                    tag, payload = self.buf[:1], self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return tag, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PgError("connection closed by the server")
            self.buf += chunk

    def query(self, sql):
        """Runs SQL (simple protocol); returns the rows of the last result
        as lists of strings (None for NULL). Raises PgError on an error."""
        self.sock.sendall(message(b"Q", sql.encode() + b"\0"))
        rows, error = [], None
        while True:
            tag, payload = self.read_message()
            if tag == b"T":
                rows = []
            elif tag == b"D":
                n = struct.unpack("!H", payload[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", payload[pos : pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos : pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif tag == b"E":
                error = parse_error(payload)
            elif tag == b"Z":
                if error:
                    raise error
                return rows

    def close(self):
        try:
            self.sock.sendall(message(b"X", b""))
        except OSError:
            pass
        self.sock.close()
