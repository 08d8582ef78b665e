"""CRC-32, the checksum of zip entries, S3's ``ChecksumCRC32`` and FastDFS file names, computed by
zlib-ng: its SIMD code takes 0.02 CPU-seconds per GiB where CPython's zlib takes 0.5 on this
project's machines (docs/performance.md, "CRC-32"). Same polynomial and results as ``zlib.crc32``.
"""

from __future__ import annotations

from zlib_ng.zlib_ng import crc32

__all__ = ["crc32"]
