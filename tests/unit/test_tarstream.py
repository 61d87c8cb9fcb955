"""The fast tar reader against archives written by tarfile, member for member.

Every archive here is written by the standard library in USTAR, PAX or GNU
format (or derived from one by flipping or cutting bytes), read back with
both tarfile and TarStream, and compared on every field an unpacker uses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator

import pytest

from dockyard import errdefs
from dockyard.image.tarstream import CHUNK, DigestingReader, TarStream

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}
LONG_NAME = "deep/" + "/".join(f"directory-{i:02d}-" + "x" * 20 for i in range(6)) + "/leaf.txt"
LONG_TARGET = "../" + "t" * 150 + "/target"
# Splittable into a ustar prefix (<= 155) and name (<= 100).
PREFIXED_NAME = "p" * 120 + "/" + "n" * 90


# ------------------------------------------------------------ archive building


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = fields.pop("mode", 0o644)
    info.uid = fields.pop("uid", 1000)
    info.gid = fields.pop("gid", 1000)
    info.mtime = fields.pop("mtime", 1_600_000_000)
    info.uname = info.gname = ""
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def write_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int,
              pax_global: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt,
                      pax_headers=pax_global) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def common_members(fmt: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """What every format can hold: the ordinary entry kinds of a layer."""
    payload = hashlib.sha256(b"seed").digest() * 1000  # 32 kB, not block-aligned
    return [
        (_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (_info("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n"),
        (_info("bin/busybox", mode=0o4755), payload + b"tail"),
        (_info("bin/sh", tarfile.SYMTYPE, mode=0o777, linkname="busybox"), None),
        (_info("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox"), None),
        (_info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (_info("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0), None),
        (_info("run/fifo", tarfile.FIFOTYPE, mode=0o600), None),
        (_info("empty", mode=0o400), b""),
        (_info("exact-block"), b"b" * tarfile.BLOCKSIZE),
        (_info(PREFIXED_NAME), b"prefixed"),
        (_info(f"{fmt}/ünïcode-名前.txt"), b"utf-8 name"),
        (_info(".wh.deleted"), b""),
    ]


def extended_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """What only PAX and GNU can hold: names and link targets over 100 bytes,
    ids beyond 7 octal digits, a negative mtime."""
    return [
        (_info(LONG_NAME), b"long"),
        (_info(LONG_NAME + ".dir", tarfile.DIRTYPE, mode=0o700), None),
        (_info("long-symlink", tarfile.SYMTYPE, linkname=LONG_TARGET), None),
        (_info("long-hardlink", tarfile.LNKTYPE, linkname=LONG_NAME), None),
        (_info("big-ids", uid=3_000_000_000, gid=2_100_000), b"ids"),
        (_info("old-file", mtime=-86_400), b"before 1970"),
    ]


# ------------------------------------------------------------ reading back


def _memfd_data(stream: TarStream, member: tarfile.TarInfo) -> bytes:
    fd = os.memfd_create("tarstream-test")
    try:
        stream.copy_to(member, fd)
        return os.pread(fd, member.size + 1, 0)
    finally:
        os.close(fd)


def read_fast(data: bytes | io.RawIOBase, copy: bool = True
              ) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    reader = io.BytesIO(data) if isinstance(data, bytes) else data
    stream = TarStream(reader)
    out = []
    for member in stream:
        body = _memfd_data(stream, member) if copy and member.isreg() else None
        out.append((member, body))
    return out


def read_tarfile(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for member in tar:
            body = tar.extractfile(member).read() if member.isreg() else None
            out.append((member, body))
    return out


def fields(member: tarfile.TarInfo) -> dict:
    out = {key: getattr(member, key)
           for key in ("name", "linkname", "type", "mode", "uid", "gid", "size", "mtime",
                       "pax_headers")}
    if member.ischr() or member.isblk():
        out["dev"] = (member.devmajor, member.devminor)
    return out


def assert_same_as_tarfile(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    fast, reference = read_fast(data), read_tarfile(data)
    assert [fields(m) for m, _ in fast] == [fields(m) for m, _ in reference]
    assert [body for _, body in fast] == [body for _, body in reference]
    return fast


class Dribble(io.RawIOBase):
    """Hands out at most `step` bytes per read, so every header, extended
    header and member body straddles read boundaries."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = bytes(self._data[self._pos:self._pos + size])
        self._pos += len(chunk)
        return chunk


def _by_name(members: list[tuple[tarfile.TarInfo, bytes | None]]
             ) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    return {member.name: (member, body) for member, body in members}


# ------------------------------------------------------------ formats


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_entry_kind_matches_tarfile(fmt: str) -> None:
    members = common_members(fmt)
    data = write_tar(members, FORMATS[fmt])
    read = _by_name(assert_same_as_tarfile(data))
    assert len(read) == len(members)
    assert read["etc"][0].isdir() and read["etc"][0].mode == 0o755
    assert read["etc/passwd"][1] == b"root:x:0:0::/root:/bin/sh\n"
    assert read["bin/busybox"][0].mode == 0o4755
    assert read["bin/busybox"][1].endswith(b"tail") and len(read["bin/busybox"][1]) == 32004
    assert read["bin/sh"][0].issym() and read["bin/sh"][0].linkname == "busybox"
    assert read["bin/ls"][0].islnk() and read["bin/ls"][0].linkname == "bin/busybox"
    null = read["dev/null"][0]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    sda = read["dev/sda"][0]
    assert sda.isblk() and (sda.devmajor, sda.devminor) == (8, 0)
    assert read["run/fifo"][0].isfifo()
    assert read["empty"][1] == b"" and read["exact-block"][1] == b"b" * 512
    assert read[PREFIXED_NAME][1] == b"prefixed"
    assert read[f"{fmt}/ünïcode-名前.txt"][1] == b"utf-8 name"


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_long_names_links_and_big_numbers(fmt: str) -> None:
    data = write_tar(extended_members(), FORMATS[fmt])
    if fmt == "gnu":
        assert b"././@LongLink" in data  # tarfile wrote GNU L and K records
    read = _by_name(assert_same_as_tarfile(data))
    assert read[LONG_NAME][1] == b"long"
    assert read[LONG_NAME + ".dir"][0].isdir()
    assert read["long-symlink"][0].linkname == LONG_TARGET
    assert read["long-hardlink"][0].linkname == LONG_NAME
    ids = read["big-ids"][0]
    assert (ids.uid, ids.gid) == (3_000_000_000, 2_100_000)
    assert read["old-file"][0].mtime == -86_400


def test_gnu_numbers_are_base_256() -> None:
    """GNU writes ids that octal cannot hold in base-256 (0x80 lead byte) and
    negative times in two's complement (0xff lead byte)."""
    data = write_tar([(_info("n", uid=3_000_000_000, mtime=-1), b"")], tarfile.GNU_FORMAT)
    assert data[108] == 0o200 and data[136] == 0o377
    (member, _), = read_fast(data)
    assert member.uid == 3_000_000_000 and member.mtime == -1


def test_pax_xattrs_and_fractional_times() -> None:
    info = _info("file")
    info.pax_headers = {"SCHILY.xattr.user.comment": "hello",
                        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                        "mtime": "1600000000.25", "atime": "1600000001.5"}
    data = write_tar([(info, b"x"), (_info("plain"), b"y")], tarfile.PAX_FORMAT)
    read = _by_name(assert_same_as_tarfile(data))
    headers = read["file"][0].pax_headers
    assert headers["SCHILY.xattr.user.comment"] == "hello"
    assert headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"
    assert read["file"][0].mtime == 1_600_000_000.25
    assert headers["atime"] == "1600000001.5"
    assert read["plain"][0].pax_headers == {}


def test_pax_path_and_size_override_the_ustar_fields() -> None:
    info = _info("short")
    info.pax_headers = {"path": "from/pax/header", "uid": "77", "gid": "88"}
    data = write_tar([(info, b"abc")], tarfile.PAX_FORMAT)
    (member, body), = assert_same_as_tarfile(data)
    assert (member.name, member.uid, member.gid, body) == ("from/pax/header", 77, 88, b"abc")


def test_global_pax_headers_apply_to_later_members() -> None:
    data = write_tar([(_info("a"), b"1"), (_info("b"), b"2")], tarfile.PAX_FORMAT,
                     pax_global={"comment": "global"})
    read = read_fast(data)
    assert [m.name for m, _ in read] == ["a", "b"]
    assert all(m.pax_headers.get("comment") == "global" for m, _ in read)


def test_old_style_directory_without_type_is_a_directory() -> None:
    """A pre-POSIX regular-file type ("\\0") with a trailing slash is a
    directory, as tarfile reads it."""
    data = write_tar([(_info("olddir/", tarfile.AREGTYPE, mode=0o755), None)],
                     tarfile.USTAR_FORMAT)
    (member, _), = assert_same_as_tarfile(data)
    assert member.isdir() and member.name == "olddir"


def test_a_stream_without_end_blocks_is_accepted() -> None:
    """tarfile accepts an archive that stops at a member boundary, so must we."""
    data = write_tar([(_info("a"), b"1" * 600)], tarfile.PAX_FORMAT)
    end = 3 * 512 + 1024  # pax header + its data block + ustar header + 2 data blocks
    assert data[end:] == bytes(len(data) - end)
    (member, body), = read_fast(data[:end])
    assert body == b"1" * 600


# ------------------------------------------------------------ stream shapes


@pytest.mark.parametrize("step", [1, 100, 511, 4099])
def test_short_reads_from_the_stream(step: int) -> None:
    members = common_members("gnu") + extended_members()
    data = write_tar(members, tarfile.GNU_FORMAT)
    expected = [(fields(m), body) for m, body in read_tarfile(data)]
    got = [(fields(m), body) for m, body in read_fast(Dribble(data, step))]
    assert got == expected


def test_unread_bodies_are_skipped() -> None:
    big = os.urandom(3 * CHUNK + 17)
    data = write_tar([(_info("big"), big), (_info("after"), b"after"),
                      (_info("link", tarfile.SYMTYPE, linkname="big"), None)],
                     tarfile.PAX_FORMAT)
    read = read_fast(data, copy=False)
    assert [(m.name, m.size) for m, _ in read] == [("big", len(big)), ("after", 5), ("link", 0)]


def test_large_member_across_chunks_is_exact() -> None:
    big = os.urandom(2 * CHUNK + 1234)
    data = write_tar([(_info("big"), big), (_info("next"), b"n")], tarfile.PAX_FORMAT)
    read = _by_name(read_fast(data))
    assert read["big"][1] == big and read["next"][1] == b"n"


def test_digesting_reader_counts_and_hashes_what_the_parser_reads() -> None:
    data = write_tar(common_members("pax"), tarfile.PAX_FORMAT)
    reader = DigestingReader(io.BytesIO(gzip.decompress(gzip.compress(data))))
    try:
        stream = TarStream(reader)
        names = [m.name for m in stream]
        reader.drain()
    finally:
        reader.close()
    assert "etc/passwd" in names
    assert reader.count == len(data)
    assert reader.hash.hexdigest() == hashlib.sha256(data).hexdigest()


def test_digesting_reader_raises_the_producer_error_in_the_reader() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError("disk on fire")

    reader = DigestingReader(Broken())
    try:
        with pytest.raises(OSError, match="disk on fire"):
            list(TarStream(reader))
    finally:
        reader.close()


# ------------------------------------------------------------ broken archives


def _sample() -> bytes:
    """"first" (header at 0, 700 bytes of data at 512), then a pax-named member."""
    return write_tar([(_info("first"), b"f" * 700), (_info(LONG_NAME), b"second")],
                     tarfile.PAX_FORMAT)


def _offsets(data: bytes) -> Iterator[tuple[str, int]]:
    """(label, offset) of each header block of the sample archive."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            yield member.name, member.offset


def test_truncated_inside_member_data_is_data_loss() -> None:
    data = _sample()
    cut = data[:512 + 300]  # inside "first"'s 700 bytes
    stream = TarStream(io.BytesIO(cut))
    member = next(iter(stream))
    fd = os.memfd_create("tarstream-test")
    try:
        with pytest.raises(errdefs.DataLoss, match=r"'first' is truncated: 400 of 700 bytes"):
            stream.copy_to(member, fd)
    finally:
        os.close(fd)


def test_truncated_body_skipped_is_data_loss() -> None:
    data = _sample()
    with pytest.raises(errdefs.DataLoss, match="ends .* short of its last entry"):
        read_fast(data[:512 + 300], copy=False)


def test_truncated_inside_a_header_is_data_loss() -> None:
    data = _sample()
    _, second = list(_offsets(data))[1]
    with pytest.raises(errdefs.DataLoss, match="truncated inside a header"):
        read_fast(data[:second + 200])


def test_truncated_inside_an_extended_header_is_data_loss() -> None:
    data = _sample()
    _, second = list(_offsets(data))[1]  # the offset of its pax header block
    with pytest.raises(errdefs.DataLoss, match="truncated inside an extended header"):
        read_fast(data[:second + 512 + 10])


def test_bad_checksum_is_data_loss() -> None:
    data = bytearray(_sample())
    data[3] ^= 0x20  # a letter of "first" in its ustar header
    with pytest.raises(errdefs.DataLoss, match="bad checksum; the layer is corrupt"):
        read_fast(bytes(data))
    with pytest.raises(tarfile.TarError):  # tarfile agrees it is broken
        read_tarfile(bytes(data))


def test_garbage_checksum_field_is_data_loss() -> None:
    data = bytearray(_sample())
    data[148:156] = b"zzzzzzz\0"
    with pytest.raises(errdefs.DataLoss, match="bad number field"):
        read_fast(bytes(data))


def test_signed_checksum_is_accepted() -> None:
    """Some old tars summed the header as signed chars; tarfile takes both."""
    data = bytearray(write_tar([(_info("caf\xe9"), b"x")], tarfile.USTAR_FORMAT))
    header = data[:512]
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 256
    assert signed != sum(header[:148]) + sum(header[156:]) + 256
    data[148:156] = b"%06o\0 " % signed
    (member, body), = assert_same_as_tarfile(bytes(data))
    assert member.name == "café" and body == b"x"


def test_malformed_pax_record_is_data_loss() -> None:
    data = bytearray(write_tar([(_info(LONG_NAME), b"x")], tarfile.PAX_FORMAT))
    record = data.index(b" path=")
    data[record - 3:record] = b"999"  # a record length past the end of the data
    _rechecksum(data, 0)
    with pytest.raises(errdefs.DataLoss, match="malformed pax extended header"):
        read_fast(bytes(data))


def _rechecksum(data: bytearray, offset: int) -> None:
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + 512])


# ------------------------------------------------------------ sparse members


def test_gnu_sparse_member_is_refused() -> None:
    info = _info("holes", tarfile.GNUTYPE_SPARSE)
    data = write_tar([(info, b"")], tarfile.GNU_FORMAT)
    assert data[156:157] == b"S"
    with pytest.raises(errdefs.NotImplementedFeature,
                       match="sparse file entry.*rebuild the layer without --sparse"):
        read_fast(data)


def test_pax_sparse_member_is_refused() -> None:
    info = _info("GNUSparseFile.0/holes")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "holes", "GNU.sparse.realsize": "1048576"}
    data = write_tar([(_info("before"), b"ok"), (info, b"1\n0\n5\n" + b"\0" * 506 + b"data!")],
                     tarfile.PAX_FORMAT)
    stream = TarStream(io.BytesIO(data))
    members = iter(stream)
    assert next(members).name == "before"
    with pytest.raises(errdefs.NotImplementedFeature, match="sparse"):
        next(members)

