"""The object's bytes, part by part: the media file, encrypted on the fly when asked.

An encrypted object is AES-GCM ciphertext followed by the 16-byte tag. Because GCM is a
counter mode, the same key and IV give the same bytes every time, so a resumed upload
re-creates any part exactly; it reads and encrypts from the start and skips what S3
already holds. Memory is one read buffer plus the part buffers the caller lends.
"""

from __future__ import annotations

from typing import BinaryIO

from voicevault.contract import ErrorCode
from voicevault.uploader.envelope import TAG_SIZE, ContentKey, StreamEncryptor, encrypted_size
from voicevault.uploader.errors import fatal

MIB = 1 << 20
TIB = 1 << 40
MAX_OBJECT_SIZE = 5 * TIB  # S3's maximum object size
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum number of parts
READ_CHUNK = 1 * MIB  # plaintext read size when encrypting
# AES-GCM's update_into wants room for a block beyond the input
BUFFER_SLACK = 16


class SourceChangedError(Exception):
    """The media file is shorter than when the upload started."""


def object_size(plain_size: int, encrypted: bool) -> int:
    return encrypted_size(plain_size) if encrypted else plain_size


def choose_part_size(size: int, preferred: int) -> int:
    """The preferred part size, raised (in whole MiB) when the object needs more than 10,000.

    Raises a fatal UploadError for an object larger than S3's 5 TiB limit.
    """
    if size > MAX_OBJECT_SIZE:
        raise fatal(
            ErrorCode.UPLOAD_FAILED,
            f"the media file is larger than S3's 5 TiB object limit ({size} bytes to store)",
        )
    part = max(preferred, MIN_PART_SIZE)
    needed = -(-size // MAX_PARTS)
    if needed > part:
        part = -(-needed // MIB) * MIB
    return part


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def part_length(size: int, part_size: int, number: int) -> int:
    """Length of part `number` (1-based)."""
    start = (number - 1) * part_size
    return max(0, min(part_size, size - start))


class ObjectReader:
    """Produces the object's bytes in order into caller-provided buffers."""

    def __init__(self, media: BinaryIO, plain_size: int, content_key: ContentKey | None) -> None:
        self._media = media
        self._plain_left = plain_size
        self._encryptor = StreamEncryptor(content_key) if content_key is not None else None
        self._tag: bytes | None = None
        self._tag_sent = 0
        self._scratch = bytearray(READ_CHUNK) if content_key is not None else None
        self.size = object_size(plain_size, content_key is not None)

    def read_into(self, buffer: bytearray, length: int) -> memoryview:
        """Fill `buffer[:length]` with the next `length` object bytes and return that view.

        The buffer must have BUFFER_SLACK spare bytes beyond `length` when encrypting.
        """
        view = memoryview(buffer)
        filled = 0
        while filled < length:
            if self._plain_left > 0:
                filled += self._read_plain(view, filled, length - filled)
            elif self._encryptor is not None:
                filled += self._read_tag(view, filled, length - filled)
            else:
                raise SourceChangedError("media file ended early")
        return view[:length]

    def _read_plain(self, view: memoryview, offset: int, wanted: int) -> int:
        n = min(wanted, self._plain_left)
        if self._encryptor is None:
            got = self._readinto_exact(view[offset : offset + n])
        else:
            assert self._scratch is not None
            n = min(n, len(self._scratch))
            got = self._readinto_exact(memoryview(self._scratch)[:n])
            written = self._encryptor.update_into(
                memoryview(self._scratch)[:got], view[offset : offset + got + BUFFER_SLACK]
            )
            if written != got:
                raise RuntimeError("AES-GCM wrote an unexpected number of bytes")
        self._plain_left -= got
        return got

    def _readinto_exact(self, target: memoryview) -> int:
        got = 0
        while got < len(target):
            n = self._media.readinto(target[got:])  # type: ignore[attr-defined]
            if not n:
                raise SourceChangedError("media file ended early")
            got += n
        return got

    def _read_tag(self, view: memoryview, offset: int, wanted: int) -> int:
        assert self._encryptor is not None
        if self._tag is None:
            self._tag = self._encryptor.finalize()
        n = min(wanted, TAG_SIZE - self._tag_sent)
        if n <= 0:
            raise SourceChangedError("read past the end of the object")
        view[offset : offset + n] = self._tag[self._tag_sent : self._tag_sent + n]
        self._tag_sent += n
        return n
