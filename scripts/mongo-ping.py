#!/usr/bin/env python3
"""Readiness check of a MongoDB wire-protocol server (FerretDB here), standard library only.

Usage: mongo-ping.py [HOST] [PORT] [TIMEOUT_SECONDS]   (defaults: 127.0.0.1 27017 3)

Sends two OP_MSG commands on one connection, `hello` then `ping` on the admin database, and
exits 0 only when both answer {ok: 1}; prints the server's maxWireVersion. Exits 1 (with the
reason on stderr) on a refused connection, a timeout, or any other answer.
"""

import socket
import struct
import sys

OP_MSG = 2013


def bson_doc(fields):
    """Encodes a flat document of str / int32 / float values."""
    body = b""
    for key, value in fields:
        name = key.encode() + b"\x00"
        if isinstance(value, bool):
            body += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            body += b"\x10" + name + struct.pack("<i", value)
        elif isinstance(value, float):
            body += b"\x01" + name + struct.pack("<d", value)
        elif isinstance(value, str):
            raw = value.encode() + b"\x00"
            body += b"\x02" + name + struct.pack("<i", len(raw)) + raw
        else:
            raise TypeError(f"unsupported BSON value {value!r}")
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def bson_top_level(data):
    """Decodes the top-level scalar fields of a BSON document (nested values are skipped)."""
    out = {}
    end = struct.unpack_from("<i", data, 0)[0] - 1
    pos = 4
    while pos < end:
        kind = data[pos]
        pos += 1
        nul = data.index(b"\x00", pos)
        key = data[pos:nul].decode("utf-8", "replace")
        pos = nul + 1
        if kind == 0x01:  # double
            out[key] = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif kind in (0x02, 0x0D, 0x0E):  # string, javascript, symbol
            size = struct.unpack_from("<i", data, pos)[0]
            out[key] = data[pos + 4 : pos + 4 + size - 1].decode("utf-8", "replace")
            pos += 4 + size
        elif kind in (0x03, 0x04):  # document, array
            pos += struct.unpack_from("<i", data, pos)[0]
        elif kind == 0x05:  # binary
            pos += 4 + 1 + struct.unpack_from("<i", data, pos)[0]
        elif kind == 0x07:  # ObjectId
            pos += 12
        elif kind == 0x08:  # bool
            out[key] = data[pos] == 1
            pos += 1
        elif kind in (0x09, 0x11, 0x12):  # datetime, timestamp, int64
            out[key] = struct.unpack_from("<q", data, pos)[0]
            pos += 8
        elif kind in (0x06, 0x0A, 0x7F, 0xFF):  # undefined, null, max key, min key
            out[key] = None
        elif kind == 0x0B:  # regex: two cstrings
            pos = data.index(b"\x00", data.index(b"\x00", pos) + 1) + 1
        elif kind == 0x10:  # int32
            out[key] = struct.unpack_from("<i", data, pos)[0]
            pos += 4
        elif kind == 0x13:  # decimal128
            pos += 16
        else:
            raise ValueError(f"unsupported BSON type 0x{kind:02x} for field {key!r}")
    return out


def recv_exact(sock, size):
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def command(sock, request_id, fields):
    body = struct.pack("<I", 0) + b"\x00" + bson_doc(fields)  # flagBits, section kind 0, document
    sock.sendall(struct.pack("<iiii", 16 + len(body), request_id, 0, OP_MSG) + body)
    length, _, response_to, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    payload = recv_exact(sock, length - 16)
    if opcode != OP_MSG or response_to != request_id:
        raise ValueError(f"unexpected reply opcode={opcode} responseTo={response_to}")
    if payload[4] != 0:
        raise ValueError(f"unexpected OP_MSG section kind {payload[4]}")
    return bson_top_level(payload[5:])


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 27017
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            hello = command(sock, 1, [("hello", 1), ("$db", "admin")])
            if hello.get("ok") != 1:
                raise ValueError(f"hello answered {hello}")
            ping = command(sock, 2, [("ping", 1), ("$db", "admin")])
            if ping.get("ok") != 1:
                raise ValueError(f"ping answered {ping}")
    except (OSError, ValueError, struct.error, IndexError) as exc:
        print(f"mongo {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(f"mongo {host}:{port}: ok (maxWireVersion={hello.get('maxWireVersion')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
