"""The strict msgpack reader: :class:`_Reader` reads values from a :class:`~.source._Source`,
in bulk or walking (see there), and checks them the same way both ways: depth and counts
against the :class:`~.errors.Limits`, keys, the kinds of values allowed where they are."""

from __future__ import annotations

import msgpack
import numpy as np

from .errors import CheckpointError, Limits, _a, _shown, _where
from .extensions import (
    _array_dtype,
    _array_from_payload,
    _array_layout,
    _check_bools,
    _extension_value,
    _Malformed,
    _unchunk,
    _unknown_extension,
)
from .layout import _BIN_HEADER_SIZES, _CHUNKED, _EXT_HEADERS, _KINDS, _MAX_NDIM, _kind_of
from .source import _CHUNK, _Source

_BULK_BYTES = 16 * 2**20  # the most bytes msgpack decodes in one go (see _Reader)

_NOT_SCALARS = {  # why the reader refuses each kind where it expects a scalar
    "bin": "found a msgpack bin, which holds array data only (inside an array extension)",
    "extension": "found a msgpack extension: extensions (arrays, complex, numpy scalars) belong in the tree only",
    "map": "expected a scalar, found a map",
    "array": "expected a scalar, found an array",
    "end": "the data ends early (truncated file?)",
}

_SCALARS = frozenset({type(None), bool, int, float, str})
_SCALARS_AND_ARRAYS = _SCALARS | {np.ndarray, complex}


class _BadMap(Exception):
    """What is wrong with the keys of a map msgpack decoded in bulk, said without its path."""


class _Reader:
    """Reads msgpack values from a _Source, front to back, in one of two ways.

    * In bulk, when the rest of the data is small (at most _BULK_BYTES, and no more bytes than
      the values the Limits still allow: a value takes at least a byte). msgpack's Unpacker
      first skips the value, which proves that every item its headers declare is present
      while building nothing; ``msgpack.unpackb`` then decodes those bytes in one go (it sets
      aside room for the count a header declares, which is safe once the items are known to
      be there), extensions included (see :func:`_extension_hook`), and :meth:`_checked`
      checks the result.
    * Walking, otherwise. msgpack decodes the scalars and the headers of maps and arrays; the
      reader builds maps and lists item by item once it has checked that the bytes left can
      hold the items a header declares, and reads extensions itself, so that an array's bytes
      go from the source straight into the array.

    Both check the same things with the same messages: depth and the number of values
    against the Limits, string keys without duplicates, the kinds of values allowed where
    they are, and the encoding of extensions.
    """

    def __init__(self, source: _Source, limits: Limits):
        self.size = source.size
        self._source = source
        self._limits = limits
        self._items = 0
        self._bypassed = 0  # bytes taken past msgpack (see _read_raw_into): its tell() does not count them
        # its limits on lengths (max_str_len, max_map_len, ...) follow max_buffer_size: the data's size
        self._unpacker = msgpack.Unpacker(source, read_size=_CHUNK, max_buffer_size=max(source.size, _CHUNK), raw=False)

    @property
    def offset(self) -> int:
        """Where the next value begins."""
        return self._unpacker.tell() + self._bypassed

    def entry(self, name: str, *, arrays: bool = False):
        """The value of the next top-level entry, whose key must be ``name``."""
        self._expect_key(name)
        return self.value((name,), 2, arrays)

    def scalar_entry(self, name: str):
        """The value of the next top-level entry, whose key must be ``name``: a scalar, not counted."""
        self._expect_key(name)
        return self._scalar((name,), _KINDS[self._first()])

    def map_header(self, path: tuple) -> int:
        kind = _KINDS[self._first()]
        if kind != "map":
            raise CheckpointError(f"{_where(path)}: expected a msgpack map, found {_a(kind)}")
        return self._header(path, self._unpacker.read_map_header, 2)

    def value(self, path: tuple, depth: int, arrays: bool):
        """The next value; ``arrays`` allows extensions (arrays, complex numbers, numpy scalars)."""
        self._enter(path, depth, 1)
        first = self._first()  # which also keeps the source's window from here on, as _bulk needs
        if self.size - self.offset <= min(_BULK_BYTES, self._limits.max_items - self._items):
            return self._checked(self._bulk(path), path, depth, arrays)
        kind = _KINDS[first]
        if kind == "map":
            return self._map(path, depth, arrays)
        if kind == "array":
            return self._list(path, depth, arrays)
        if kind == "extension" and arrays:
            try:
                return self._extension(first)
            except _Malformed as problem:
                raise CheckpointError(f"{_where(path)}: {problem}") from None
        return self._scalar(path, kind)

    def _enter(self, path, depth: int, count: int) -> None:
        """Count ``count`` values at ``depth`` against the limits."""
        if count and depth > self._limits.max_depth:
            raise CheckpointError(f"{_where(path)}: nested deeper than Limits.max_depth={self._limits.max_depth}")
        self._items += count
        if self._items > self._limits.max_items:
            raise CheckpointError(f"more than Limits.max_items={self._limits.max_items:,} values")

    # In bulk

    def _bulk(self, path):
        """The next value as ``msgpack.unpackb`` decodes it: maps by :func:`_map_hook`,
        extensions by :func:`_extension_hook`, bins as bytes."""
        start = self.offset
        self._call(path, self._unpacker.skip)
        with self._source.bytes_read(start, self.offset) as data:
            return self._call(path, lambda: _unpack_in_bulk(data))

    def _checked(self, value, path, depth, arrays):
        """``value`` (counted already) from :meth:`_bulk`, checked as the walker checks what it
        reads, with maps turned into dicts."""
        kind = type(value)
        plain = _SCALARS_AND_ARRAYS if arrays else _SCALARS  # the items that need no checking
        if kind is dict:
            self._enter(path, depth + 1, len(value))
            for key, item in value.items():
                if type(item) not in plain:
                    value[key] = self._checked(item, path + (key,), depth + 1, arrays)
            return _unchunk(value, path) if arrays and _CHUNKED in value else value
        if kind is list:
            self._enter(path, depth + 1, len(value))
            if not plain.issuperset(map(type, value)):  # most lists hold scalars, such as a structure node ["leaf"]
                for i, item in enumerate(value):
                    if type(item) not in plain:
                        value[i] = self._checked(item, path + (i,), depth + 1, arrays)
            return value
        if kind in plain or arrays and isinstance(value, np.generic):
            return value
        if kind is _BadMap or kind is _Malformed and arrays:
            raise CheckpointError(f"{_where(path)}: {value}")
        if kind is msgpack.Timestamp and arrays:  # msgpack decodes extension -1 itself
            raise CheckpointError(f"{_where(path)}: {_unknown_extension(-1)}")
        raise _not_scalar_error(path, _kind_of(value))

    # Walking

    def _map(self, path, depth, arrays) -> dict:
        out = {}
        for _ in range(self.map_header(path)):
            key = self._key(path)
            if key in out:
                raise CheckpointError(f"{_where(path)}: {_duplicate_key(key)}")
            out[key] = self.value(path + (key,), depth + 1, arrays)
        if arrays and _CHUNKED in out:
            return _unchunk(out, path)
        return out

    def _list(self, path, depth, arrays) -> list:
        out = []
        for i in range(self._header(path, self._unpacker.read_array_header, 1)):
            out.append(self.value(path + (i,), depth + 1, arrays))
        return out

    def _key(self, path):
        kind = _KINDS[self._first()]
        if kind != "str":
            raise CheckpointError(f"{_where(path)}: {_not_a_key(kind)}")
        return self._call(path, self._unpacker.unpack)

    def _expect_key(self, name: str) -> None:
        key = self._key((name,))
        if key != name:
            raise CheckpointError(f"corrupt checkpoint: expected the entry {name!r} next, found {_shown(key)}")

    def _scalar(self, path, kind: str):
        if kind in _NOT_SCALARS:
            raise _not_scalar_error(path, kind)
        return self._call(path, self._unpacker.unpack)

    def _first(self) -> int:
        """The first byte of the next value (_END at the end); ``_KINDS[byte]`` is its kind."""
        return self._source.peek(self._unpacker.tell() + self._bypassed)

    def _header(self, path, read_header, min_bytes_per_item: int) -> int:
        """The item count of the map or array header ``read_header`` reads, checked against the
        bytes left and the values the limits still allow before anything is allocated."""
        length = self._call(path, read_header)
        remaining = self.size - self.offset
        if length * min_bytes_per_item > remaining:
            raise CheckpointError(
                f"{_where(path)}: declares {length:,} items but only {remaining:,} bytes remain (truncated or corrupt)"
            )
        if length > self._limits.max_items - self._items:
            limit = self._limits.max_items
            raise CheckpointError(f"{_where(path)}: {length:,} items make more than Limits.max_items={limit:,} values")
        return length

    def _call(self, path, read):
        try:
            return read()
        except CheckpointError:
            raise
        except msgpack.OutOfData:
            raise CheckpointError(f"{_where(path)}: the data ends early (truncated file?)") from None
        except msgpack.StackError:  # msgpack nests at most 1024 deep, Limits.max_depth at most 300
            limit = self._limits.max_depth
            raise CheckpointError(f"{_where(path)}: nested deeper than Limits.max_depth={limit}") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise CheckpointError(f"{_where(path)}: malformed msgpack ({type(exc).__name__}: {exc})") from None

    def _extension(self, first: int):
        """The value of the extension that begins with the byte ``first`` (raises _Malformed)."""
        header_size, fixed_size = _EXT_HEADERS[first]
        header = self._read_raw(header_size)
        size = fixed_size or int.from_bytes(header[1:-1], "big")
        code = int.from_bytes(header[-1:], "big", signed=True)
        end = self.offset + size
        if end > self.size:
            raise _Malformed(f"an extension declares {size:,} bytes but only {self.size - self.offset:,} remain")
        return _extension_value(code, lambda: self._read_raw(size), lambda: self._array(end))

    def _array(self, end: int) -> np.ndarray:
        """The array of an extension payload ``[shape, dtype name, data]`` that ends at ``end``,
        its data read straight into the array."""
        if _KINDS[self._first()] != "array" or self._raw_call(self._unpacker.read_array_header) != 3:
            raise _Malformed(_array_layout())
        kind = _KINDS[self._first()]
        if kind != "array":
            raise _Malformed(_array_layout(f"its shape must be a msgpack array, found {_a(kind)}"))
        ndim = self._raw_call(self._unpacker.read_array_header)
        if ndim > _MAX_NDIM:
            raise _Malformed(_array_layout(f"at most {_MAX_NDIM} dimensions, found {ndim:,}"))
        shape = [self._dimension() for _ in range(ndim)]
        kind = _KINDS[self._first()]
        if kind != "str":
            raise _Malformed(_array_layout(f"its dtype name must be a str, found {_a(kind)}"))
        name = self._raw_call(self._unpacker.unpack)
        first = self._first()
        if _KINDS[first] != "bin":
            raise _Malformed(_array_layout(f"its data must be a msgpack bin, found {_a(_KINDS[first])}"))
        size = int.from_bytes(self._read_raw(_BIN_HEADER_SIZES[first])[1:], "big")
        dtype = _array_dtype(shape, name, size)
        if self.offset + size != end:
            raise _Malformed("the array's encoding does not fill its extension exactly")
        out = np.empty(shape, dtype)
        data = out.reshape(-1).view(np.uint8)
        self._read_raw_into(memoryview(data))
        if dtype.kind == "b":
            _check_bools(data)
        out.flags.writeable = False
        return out

    def _dimension(self) -> int:
        kind = _KINDS[self._first()]
        if kind != "int":
            raise _Malformed(f"an array's dimensions must be ints, found {_a(kind)}")
        return self._raw_call(self._unpacker.unpack)

    def _raw_call(self, read):
        """``read()``, its msgpack errors raised as _Malformed (inside an extension)."""
        try:
            return read()
        except CheckpointError:
            raise
        except msgpack.OutOfData:
            raise _Malformed("the data ends early (truncated file?)") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise _Malformed(_array_layout(f"{type(exc).__name__}: {exc}")) from None

    def _read_raw(self, n: int) -> bytearray:
        if n > self.size - self.offset:
            raise _Malformed("the data ends early (truncated file?)")
        out = bytearray(n)
        self._read_raw_into(memoryview(out))
        return out

    def _read_raw_into(self, out: memoryview) -> None:
        """Fill ``out`` with the next bytes, past msgpack: those it has read ahead come from its
        buffer, the rest straight from the source."""
        held = min(len(out), self._source.given - self.offset)
        out[:held] = self._unpacker.read_bytes(held)
        if held < len(out):
            self._source.read_into(out[held:])
            self._bypassed += len(out) - held


# Maps and extensions in bulk, and the messages both ways of reading share


def _unpack_in_bulk(data: memoryview):
    """The msgpack value ``data`` holds, every item of which is known to be there (see
    _Reader). Its limits on lengths (max_str_len, max_map_len, ...) default to len(data)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_map_hook, ext_hook=_extension_hook)


def _map_hook(pairs: list):
    """msgpack's object_pairs_hook in bulk: the dict of ``pairs``, or the _BadMap saying why
    there is none, which :meth:`_Reader._checked` raises with the path."""
    try:
        out = dict(pairs)
    except TypeError:  # an unhashable key, such as a list
        out = {}
    if len(out) == len(pairs) and {str}.issuperset(map(type, out)):
        return out
    seen = set()
    for key, _ in pairs:
        if type(key) is not str:
            return _BadMap(_not_a_key(_kind_of(key)))
        if key in seen:
            return _BadMap(_duplicate_key(key))
        seen.add(key)


def _extension_hook(code: int, payload: bytes):
    """msgpack's ext_hook in bulk: the value of an extension, or the _Malformed saying why it
    has none, which :meth:`_Reader._checked` raises with the path."""
    try:
        return _extension_value(code, lambda: payload, lambda: _array_from_payload(payload))
    except _Malformed as problem:
        return problem


def _not_a_key(kind: str) -> str:
    return f"map keys must be strings, found {_a(kind)}"


def _duplicate_key(key) -> str:
    return f"duplicate map key {_shown(key)}"


def _not_scalar_error(path: tuple, kind: str) -> CheckpointError:
    return CheckpointError(f"{_where(path)}: {_NOT_SCALARS[kind]}")
