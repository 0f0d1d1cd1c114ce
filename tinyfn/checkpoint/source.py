"""Where a checkpoint's bytes come from: a :class:`_Source` over a regular file (refused,
before a byte is read, if it is anything else or too large) or over bytes in memory, read
once, front to back, with the SHA-256 checksum computed on the way."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Iterator

from .errors import CheckpointError, Limits, _printable
from .files import _O_BINARY
from .layout import _END, _TRAILER_SIZE

_CHUNK = 64 * 1024  # bytes read at a time
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a named pipe must not wait for a writer


class _Source:
    """The bytes of a checkpoint (a file or bytes in memory), read once, front to back.

    msgpack's Unpacker pulls bytes through :meth:`read`; the reader looks at the next byte with
    :meth:`peek` and takes bytes past msgpack with :meth:`read_into` (an array's data goes
    straight into the array). Every byte before ``hash_end`` goes through SHA-256 once, in
    order, as it is read; :meth:`checksum_matches` compares the result with the last 32 bytes.
    """

    def __init__(self, stream, size: int, hash_end: int, name: str):
        self.size = size
        self.given = 0  # bytes passed on, to msgpack or to read_into
        self._stream = stream
        self._name = name
        self._hash_end = hash_end
        self._digest = hashlib.sha256()
        self._fetched = 0  # bytes read from the stream
        self._window = bytearray()  # the bytes from _window_start to _fetched, for peek
        self._window_start = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stream.close()

    def read(self, n: int) -> bytes:
        """At most ``n`` of the next bytes, ``b""`` at the end (msgpack's Unpacker reads these)."""
        if self.given == self._fetched:
            piece = self._fetch(n)
            self._window += piece
        else:  # bytes peek read ahead
            start = self.given - self._window_start
            piece = bytes(self._window[start : start + n])
        self.given += len(piece)
        return piece

    def peek(self, offset: int) -> int:
        """The byte at ``offset`` (_END at the end). ``offset`` is at most ``given``, and at
        least the offset of the previous call: bytes before it are forgotten."""
        if offset - self._window_start >= _CHUNK:
            del self._window[: offset - self._window_start]
            self._window_start = offset
        if offset == self._fetched:
            if offset == self.size:
                return _END
            self._window += self._fetch(_CHUNK)
        return self._window[offset - self._window_start]

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` with the bytes that follow those given so far."""
        start = self.given - self._window_start
        ahead = self._window[start : start + len(out)]
        out[: len(ahead)] = ahead
        self.given += len(ahead)
        rest = out[len(ahead) :]
        if rest:  # past the window: straight from the stream
            while rest:
                count = self._stream.readinto(rest)
                if not count:
                    raise self._changed()
                self._hash(rest[:count])
                self._fetched += count
                rest = rest[count:]
            self.given = self._window_start = self._fetched
            self._window.clear()

    @contextlib.contextmanager
    def bytes_read(self, start: int, end: int) -> Iterator[memoryview]:
        """A view of the bytes from ``start`` to ``end``, read already and not forgotten by :meth:`peek`."""
        begin = start - self._window_start
        with memoryview(self._window) as window, window[begin : begin + end - start] as data:
            yield data

    def tail(self, n: int) -> bytes:
        """The last ``n`` bytes, read without moving on."""
        position = self._stream.tell()
        self._stream.seek(self.size - n)
        data = self._stream.read(n)
        self._stream.seek(position)
        return data

    def checksum_matches(self) -> bool:
        """Whether the last 32 bytes are the SHA-256 of the bytes before ``hash_end`` (reading on to it)."""
        while self._fetched < self._hash_end:
            self._fetch(4 * _CHUNK)
        return self._digest.digest() == self.tail(32)

    def _fetch(self, n: int) -> bytes:
        n = min(n, self.size - self._fetched)
        data = self._stream.read(n) if n else b""
        if n and not data:
            raise self._changed()
        self._hash(data)
        self._fetched += len(data)
        return data

    def _hash(self, data) -> None:
        covered = self._hash_end - self._fetched  # how much of data lies before hash_end
        if covered > 0:
            self._digest.update(data[:covered])

    def _changed(self) -> CheckpointError:
        return CheckpointError(
            f"{self._name}: the file ended after {self._fetched:,} of its {self.size:,} bytes "
            "(it changed while it was read)"
        )


def _opened(path, limits: Limits, *, checksummed: bool) -> _Source:
    """A _Source over the regular file ``path``; anything else, or a file beyond ``limits``,
    is refused before a byte is read."""
    name = _printable(os.fspath(path))
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{name}: expected a checkpoint file, found {_file_kind(info.st_mode)}")
        size = _checked_size(info.st_size, limits, f"{name}: ")
    except BaseException:
        os.close(fd)
        raise
    return _Source(open(fd, "rb", buffering=0), size, _hash_end(size, checksummed), name)


def _in_memory(data, limits: Limits, *, checksummed: bool) -> _Source:
    """A _Source over the bytes-like ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, found {type(data).__name__}")
    size = _checked_size(memoryview(data).nbytes, limits, "")
    stream = io.BytesIO(data if type(data) is bytes else bytes(data))  # BytesIO shares bytes, copies the rest
    return _Source(stream, size, _hash_end(size, checksummed), "the data")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    return next((kind for test, kind in kinds if test(mode)), "something that is not a regular file")


def _checked_size(size: int, limits: Limits, where: str) -> int:
    if size == 0:
        raise CheckpointError(f"{where}empty input: a checkpoint is never empty")
    if size > limits.max_bytes:
        raise CheckpointError(f"{where}{size:,} bytes is more than Limits.max_bytes={limits.max_bytes:,}")
    return size


def _hash_end(size: int, checksummed: bool) -> int:
    """Where the bytes covered by the checksum end: before the 41-byte checksum entry."""
    return max(size - _TRAILER_SIZE, 0) if checksummed else 0
