"""Check a GGUF header's counts against the file's size before the gguf package parses it.

The gguf package's reader trusts every count: a string or array length past the end of the
file gives it empty slices instead of an error, so one flipped byte in an array's element
count makes it loop over that count, appending empty parts (unbounded memory and time; a
flipped test file took > 11 GB). This walk reads only the header (the key/value section and
the tensor infos), one bounds check per count, and stops at the first that cannot fit:
a key, string, array or tensor info that would run past the end of the file.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import NoReturn

from engram_cli.errors import BadInputError

# GGUF value types (gguf.GGUFValueType) -> byte size; STRING (8) and ARRAY (9) are walked
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, no dims, type, offset


class _Walk:
    def __init__(self, buf, order: str) -> None:
        self.buf, self.pos, self.order, self.size = buf, 0, order, len(buf)

    def fail(self, what: str) -> NoReturn:
        raise BadInputError(f"not a readable GGUF file ({what} runs past the end of the file at byte {self.pos} of {self.size})")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            self.fail(what)
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from(self.order + "I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from(self.order + "Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> None:
        self.take(self.u64(what), what)

    def value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in SCALAR_BYTES:
            self.take(SCALAR_BYTES[vtype], what)
        elif vtype == STRING:
            self.string(what)
        elif vtype == ARRAY and depth < 4:
            itype, count = self.u32(what), self.u64(what)
            if itype in SCALAR_BYTES:
                self.take(count * SCALAR_BYTES[itype], f"{what} ({count} elements)")
                return
            if count * 8 > self.size - self.pos:  # every string or nested array needs >= 8 bytes
                self.fail(f"{what} ({count} elements)")
            for _ in range(count):
                self.value(itype, what, depth + 1)
        else:
            raise BadInputError(f"not a readable GGUF file ({what} has unknown value type {vtype})")


def check_gguf_bounds(path: Path) -> None:
    """Raise :class:`BadInputError` (one line, naming the file) when a count in ``path``'s
    header cannot fit in the file; return quietly otherwise (and for non-GGUF files, which
    the reader then refuses with its own message)."""
    size = path.stat().st_size
    if size < 24:
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            return
        version = struct.unpack_from("<I", buf, 4)[0]
        order = "<" if version & 0xFFFF else ">"  # a byte-swapped (big-endian) file, as the reader detects
        w = _Walk(buf, order)
        w.pos = 8
        try:
            n_tensors, n_kv = w.u64("the tensor count"), w.u64("the key count")
            if n_kv * MIN_KV_BYTES > size - w.pos:
                w.fail(f"the key count ({n_kv})")
            if n_tensors * MIN_TENSOR_INFO_BYTES > size - w.pos:
                w.fail(f"the tensor count ({n_tensors})")
            for i in range(n_kv):
                w.string(f"key {i}'s name")
                w.value(w.u32(f"key {i}'s type"), f"key {i}'s value")
            for i in range(n_tensors):
                w.string(f"tensor {i}'s name")
                w.take(8 * w.u32(f"tensor {i}'s dimension count"), f"tensor {i}'s dimensions")
                w.take(12, f"tensor {i}'s type and offset")
        except BadInputError as exc:
            raise BadInputError(f"{path.name}: {exc.message}") from None
