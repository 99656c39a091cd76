"""A Redis protocol (RESP) client for the hot paths: commands encoded by hand, replies read in bulk.

redis-py spends several µs of Python per command (argument packing, one parser call per
reply); the stream queues tens of thousands of commands per commit and a decision's feature
read is a few hundred. So the writers and serving build RESP themselves and use redis-py only
for its connection pool:

* encoding: :func:`bulk` and :func:`resp_command` for one command; :func:`resp_keys_command`
  for one command over many keys, built with Arrow; :class:`Ragged` byte matrices and
  :func:`join_rows` to lay out many commands of one shape with numpy (the online writer's bulk
  path);
* sending: :class:`RespTransaction` (one MULTI … EXEC) and :func:`roundtrip` (one write, the
  replies read back);
* reading: :func:`read_replies` and :func:`read_transaction`, straight from the connection's
  socket into one hiredis reader.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

# --- encoding ---------------------------------------------------------------------------------


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def bulk_arg(value: bytes | str | int | float) -> bytes:
    """One command argument as a RESP bulk string (str as UTF-8, numbers as their digits)."""
    if isinstance(value, bytes):
        return bulk(value)
    if isinstance(value, str):
        return bulk(value.encode())
    return bulk(repr(value).encode() if isinstance(value, float) else b"%d" % value)


def resp_command(*args: bytes | str | int | float) -> bytes:
    """One command encoded as RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join([
        b"$%d\r\n%s\r\n" % (len(a), a) if type(a) is bytes else bulk_arg(a) for a in args])


def arrow_decimal(values: Any) -> pa.Array:
    """Integers (Arrow or numpy) as their decimal digits, an Arrow binary array."""
    return pc.cast(pc.cast(values, pa.string()), pa.binary())


def arrow_bulk(values: pa.Array) -> pa.Array:
    """Each binary value as a RESP bulk string, with Arrow's element-wise join."""
    return pc.binary_join_element_wise(b"$", arrow_decimal(pc.binary_length(values)), b"\r\n",
                                       values, b"\r\n", b"")


def arrow_bytes(values: pa.Array) -> bytes:
    """A binary array's values concatenated: its data buffer, between its first and last
    offsets."""
    offsets = np.frombuffer(values.buffers()[1], np.int32)[
        values.offset:values.offset + len(values) + 1]
    return values.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes() \
        if len(values) else b""


def arrow_keys(key: Callable[[str], str], ids: pa.Array) -> pa.Array:
    """``key(i)`` for every id of ``ids`` (strings), as binary, built with Arrow from the
    key function's template: ``key`` must put its argument once, anywhere."""
    marker = "\x00"
    parts = key(marker).split(marker)
    if len(parts) != 2:
        raise ValueError(f"{getattr(key, '__name__', key)!r} must use its argument once")
    return pc.binary_join_element_wise(parts[0].encode(), pc.cast(ids, pa.binary()),
                                       parts[1].encode(), b"")


def resp_keys_command(command: bytes, key: Callable[[str], str], ids: pa.Array) -> bytes:
    """One ``command`` (DEL, say) whose arguments are ``key(i)`` for every id of ``ids``
    (arrow_keys), as RESP."""
    return (b"*%d\r\n" % (len(ids) + 1) + bulk(command)
            + arrow_bytes(arrow_bulk(arrow_keys(key, ids))))


# --- many commands of one shape, laid out with numpy -----------------------------------------

Ragged = tuple[np.ndarray, np.ndarray]
"""Byte strings as rows of a uint8 matrix, each left-aligned, and each one's length."""


def ragged(items: Sequence[bytes]) -> Ragged:
    """Byte strings as a Ragged matrix."""
    lengths = np.fromiter(map(len, items), np.int64, len(items))
    width = max(1, int(lengths.max()) if len(items) else 1)
    return byte_matrix(np.array(items, dtype=f"S{width}")), lengths


def byte_matrix(strings: np.ndarray) -> np.ndarray:
    """A numpy bytes array (dtype S<w>) as its (n, w) uint8 matrix."""
    width = max(1, strings.dtype.itemsize)
    return np.ascontiguousarray(strings, dtype=f"S{width}").view(np.uint8).reshape(
        len(strings), width)


def decimal_rows(values: np.ndarray) -> Ragged:
    """Non-negative integers as their decimal digits."""
    v = np.asarray(values, dtype=np.int64)
    digits = np.ones(len(v), np.int64)
    top = int(v.max()) if len(v) else 0
    k = 1
    while 10 ** k <= top:
        digits += v >= 10 ** k
        k += 1
    out = np.zeros((len(v), k), np.uint8)
    for j in range(k):  # the j-th digit from the left: 10^(digits-1-j)
        place = digits - 1 - j
        out[:, j] = np.where(place >= 0, ord("0") + (v // 10 ** np.maximum(place, 0)) % 10, 0)
    return out, digits


def join_rows(n: int, pieces: Sequence[bytes | Ragged]) -> bytes:
    """Row i's pieces, each constant (bytes) or row i of a Ragged matrix, concatenated, for
    every row in turn: the pieces side by side in one matrix (the constant ones copied in as
    one template row), read out in row-major order without the rows' padding. No Python
    object is made per row or per piece."""
    widths = [len(p) if isinstance(p, bytes) else p[0].shape[1] for p in pieces]
    template = np.zeros(sum(widths), np.uint8)
    encoded: list[tuple[int, int, Ragged]] = []
    at = 0
    for piece, width in zip(pieces, widths, strict=True):
        if isinstance(piece, bytes):
            template[at:at + width] = np.frombuffer(piece, np.uint8)
        else:
            encoded.append((at, width, piece))
        at += width
    out = np.empty((n, len(template)), np.uint8)
    out[:] = template
    keep: np.ndarray | None = None
    for at, width, (matrix, lengths) in encoded:
        out[:, at:at + width] = matrix
        if n and int(lengths.min()) < width:  # padding to leave out
            if keep is None:
                keep = np.ones(out.shape, bool)
            keep[:, at:at + width] = np.arange(width) < lengths[:, None]
    return (out if keep is None else out[keep]).tobytes()


def rows_as_bytes(rows: Ragged) -> list[bytes]:
    """The rows of a Ragged matrix whose every row ends in "\\r\\n", as bytes: only padding is
    a trailing zero byte there, and numpy's fixed-width bytes drop exactly those, in C."""
    out = rows[0]
    return out.view(f"S{out.shape[1]}").ravel().tolist()


# --- reading replies --------------------------------------------------------------------------


def _socket(conn: Any) -> socket.socket:
    """The socket of a connected redis-py connection. redis-py has no public way to read many
    replies at once (``read_response`` parses one per call, several µs each), so the replies
    are read from the socket here; this is the one place that touches redis-py's private
    state."""
    sock: socket.socket | None = conn._sock
    if sock is None:
        raise RedisConnectionError("Redis connection closed before its replies were read")
    return sock


def read_replies(conn: Any, count: int, received: bytes | bytearray = b"") -> list[Any]:
    """``count`` replies read from a redis-py connection's socket into one hiredis reader,
    after the bytes already ``received``. Error replies come back as ``ResponseError`` values,
    not raised. The caller sent the commands and nothing else is pending on the connection
    (every earlier reply was read), so redis-py's own parser buffer stays empty; on any
    exception the caller must drop the connection."""
    reader = hiredis.Reader(replyError=ResponseError)
    sock = _socket(conn)
    buf = bytearray(1 << 16)
    replies: list[Any] = []
    if received:
        reader.feed(received)  # type: ignore[arg-type]
        while len(replies) < count and (reply := reader.gets()) is not False:
            replies.append(reply)
    while len(replies) < count:
        n = sock.recv_into(buf)
        if not n:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        reader.feed(buf, 0, n)  # type: ignore[arg-type]  # hiredis reads any buffer
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    return replies


_QUEUED = b"+QUEUED\r\n"


def read_transaction(conn: Any, commands: int) -> tuple[list[ResponseError], Any]:
    """The replies to MULTI, ``commands`` queued commands and EXEC: (the errors among the
    queued ones, EXEC's reply). While the bytes are exactly ``+OK`` and one ``+QUEUED`` per
    command they are only compared, not parsed (one hiredis call per reply would hold the GIL
    against the thread applying the stream's next batch); from the first byte that differs (a
    command refused) every reply is parsed (read_replies)."""
    expected = b"+OK\r\n" + _QUEUED * commands
    sock = _socket(conn)
    got = bytearray()
    while len(got) < len(expected):
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        start = len(got)
        got += chunk
        end = min(len(got), len(expected))
        if got[start:end] != expected[start:end]:
            *queued, result = read_replies(conn, commands + 2, got)
            return [r for r in queued if isinstance(r, ResponseError)], result
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(got, len(expected), len(got) - len(expected))  # type: ignore[arg-type]
    buf = bytearray(1 << 16)
    while (result := reader.gets()) is False:
        n = sock.recv_into(buf)
        if not n:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        reader.feed(buf, 0, n)  # type: ignore[arg-type]
    return [], result


# --- sending ----------------------------------------------------------------------------------


def roundtrip(redis: Redis, payload: bytes, count: int,
              timeout: float | None = None) -> list[Any]:
    """Send RESP-encoded commands in one write and read ``count`` replies on one pooled
    connection; the first error reply is raised. Any error drops the connection, so no unread
    reply reaches its next user.

    ``timeout`` (seconds, > 0) bounds this call's wait for each read of the socket instead of
    the client's socket timeout (a decision waits at most what is left of its budget); the
    connection gets the client's timeout back afterwards."""
    if timeout is not None and timeout <= 0:
        raise ValueError(f"roundtrip timeout must be positive, not {timeout}")
    pool = redis.connection_pool
    conn = pool.get_connection()
    sock = _connected_socket(conn) if timeout is not None else None
    try:
        if sock is not None:
            sock.settimeout(timeout)
        conn.send_packed_command([payload])
        replies = read_replies(conn, count)
        failed = next((r for r in replies if isinstance(r, ResponseError)), None)
        if failed is not None:
            raise failed
        return replies
    except BaseException:
        conn.disconnect()
        raise
    finally:
        if sock is not None and _connected_socket(conn) is sock:  # still connected
            sock.settimeout(conn.socket_timeout)
        pool.release(conn)


def _connected_socket(conn: Any) -> socket.socket | None:
    """The connection's socket, None before it connects or after it was dropped."""
    try:
        return _socket(conn)
    except RedisConnectionError:
        return None


class RespTransaction:
    """Commands encoded as RESP and sent as one MULTI … EXEC on one connection.

    Replies are read back in order; any error (a command refused while queued, or at EXEC)
    raises ``ResponseError`` and, as with MULTI, nothing of the transaction is applied in the
    first case.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.commands = 0

    def __len__(self) -> int:
        return self.commands

    def command(self, *args: bytes | str | int | float) -> None:
        self._parts.append(resp_command(*args))
        self.commands += 1

    def raw(self, payload: bytes, commands: int) -> None:
        """Append ``commands`` commands already encoded as RESP."""
        self._parts.append(payload)
        self.commands += commands

    def payload(self) -> bytes:
        """The queued commands' RESP, as they will be sent between MULTI and EXEC."""
        return b"".join(self._parts)

    def execute(self, client: Redis, guard: Mapping[str, bytes] | None = None
                ) -> list[Any] | None:
        """Send MULTI, the commands and EXEC; returns EXEC's replies.

        ``guard`` (optional fencing): keys that must hold these values. They are WATCHed and
        read first; when one differs, or changes before EXEC, nothing is written and None is
        returned."""
        if not self.commands:
            return []
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            if guard:
                keys = list(guard)
                conn.send_packed_command([b"*%d\r\n$5\r\nWATCH\r\n" % (len(keys) + 1)
                                          + b"".join(bulk_arg(k) for k in keys)
                                          + b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
                                          + b"".join(bulk_arg(k) for k in keys)])
                conn.read_response()
                held = conn.read_response()
                if list(held) != [guard[k] for k in keys]:
                    conn.send_packed_command([b"*1\r\n$7\r\nUNWATCH\r\n"])
                    conn.read_response()
                    return None
            conn.send_packed_command([b"".join([b"*1\r\n$5\r\nMULTI\r\n", *self._parts,
                                                b"*1\r\n$4\r\nEXEC\r\n"])])
            # +OK for MULTI, +QUEUED (or an error) per command, then EXEC's reply: a list,
            # None when a WATCHed key changed, or an error such as EXECABORT
            queued, result = read_transaction(conn, self.commands)
            errors = [str(r) for r in queued]
            if isinstance(result, ResponseError):
                raise ResponseError(f"{result}; first queued error: {errors[:1]}")
            if result is None:
                if guard:
                    return None  # a watched key changed: nothing was written
                raise ResponseError("EXEC returned nothing (the transaction was discarded)")
            failed = [r for r in result if isinstance(r, ResponseError)]
            if failed:
                raise ResponseError(f"{len(failed)} command(s) failed in EXEC: {failed[0]}")
            return list(result)
        except BaseException:
            conn.disconnect()  # unread replies would poison the next user of the connection
            raise
        finally:
            pool.release(conn)
