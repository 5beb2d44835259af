"""Part sizes: S3's limits (5 MiB minimum part, 10,000 parts, 5 TiB objects) always hold."""

from __future__ import annotations

import pytest

from voicevault.contract import ErrorClass
from voicevault.uploader.envelope import TAG_SIZE
from voicevault.uploader.errors import UploadError
from voicevault.uploader.parts import (
    MAX_OBJECT_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    choose_part_size,
    object_size,
    part_count,
    part_length,
)

GIB = 1 << 30
TIB = 1 << 40


@pytest.mark.parametrize("size", [0, 1, 17 * MIB, 1 * GIB, 78 * GIB])
def test_normal_files_keep_the_configured_part_size(size: int) -> None:
    assert choose_part_size(size, 8 * MIB) == 8 * MIB


@pytest.mark.parametrize("preferred", [0, 1, 1 * MIB, MIN_PART_SIZE - 1])
def test_part_size_is_never_under_5_mib(preferred: int) -> None:
    assert choose_part_size(100 * MIB, preferred) == MIN_PART_SIZE


@pytest.mark.parametrize(
    "size", [8 * MIB * MAX_PARTS + 1, 100 * GIB, 1 * TIB, MAX_OBJECT_SIZE - 1, MAX_OBJECT_SIZE]
)
def test_large_objects_grow_the_part_size_in_whole_mib(size: int) -> None:
    """Past 10,000 parts of the configured size, parts grow, but only as much as needed."""
    part = choose_part_size(size, 8 * MIB)
    assert part > 8 * MIB and part % MIB == 0
    assert part_count(size, part) <= MAX_PARTS
    assert part_count(size, part - MIB) > MAX_PARTS, "one MiB less would need too many parts"


def test_exactly_10000_parts_of_the_configured_size_fit() -> None:
    size = 8 * MIB * MAX_PARTS
    assert choose_part_size(size, 8 * MIB) == 8 * MIB
    assert part_count(size, 8 * MIB) == MAX_PARTS


@pytest.mark.parametrize("size", [MAX_OBJECT_SIZE + 1, 6 * TIB])
def test_objects_over_5_tib_are_refused_as_fatal(size: int) -> None:
    with pytest.raises(UploadError) as caught:
        choose_part_size(size, 8 * MIB)
    error = caught.value
    assert error.error_class is ErrorClass.FATAL and int(error.code) == 16111
    assert "larger than S3's 5 TiB object limit" in error.message
    assert str(size) in error.message


def test_the_limit_counts_the_encryption_tag() -> None:
    """A 5 TiB recording fits in the clear but not once the GCM tag is appended."""
    assert choose_part_size(object_size(MAX_OBJECT_SIZE, encrypted=False), 8 * MIB) > 0
    encrypted = object_size(MAX_OBJECT_SIZE, encrypted=True)
    assert encrypted == MAX_OBJECT_SIZE + TAG_SIZE
    with pytest.raises(UploadError, match="5 TiB"):
        choose_part_size(encrypted, 8 * MIB)


def test_part_lengths_cover_the_object_exactly() -> None:
    size, part = 23 * MIB + 7, 5 * MIB
    count = part_count(size, part)
    lengths = [part_length(size, part, n) for n in range(1, count + 1)]
    assert count == 5 and sum(lengths) == size
    assert lengths[:-1] == [part] * 4 and lengths[-1] == 3 * MIB + 7
    assert part_count(0, part) == 1 and part_length(0, part, 1) == 0
