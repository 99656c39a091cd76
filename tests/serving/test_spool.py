"""The local spool (serving/spool.py): ordered, bounded, survives a reopen, cuts a torn tail."""

from __future__ import annotations

from pathlib import Path

from serving.spool import Quota, Spool, frame


def records(n: int, start: int = 0, topic: str = "decisions") -> list[tuple[str, bytes, bytes]]:
    return [(topic, f"k{i % 7}".encode(), b'{"txn_id":"t%06d","pad":"%s"}' % (i, b"x" * (i % 50)))
            for i in range(start, start + n)]


def drain(spool: Spool, max_records: int = 10, max_bytes: int = 1 << 20) -> list[tuple]:
    out: list[tuple] = []
    while True:
        batch = spool.read(max_records, max_bytes)
        if not batch:
            return out
        out += batch.records
        spool.ack(batch)


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 1 << 30, segment_bytes=2000)
    want = records(500)
    assert spool.append(want[:200]) == 200
    assert spool.append(want[200:]) == 300
    assert spool.records == 500
    assert spool.pending_bytes == sum(len(frame(*r)) for r in want)
    assert len(list((tmp_path / "s").glob("*.seg"))) > 10  # rolled
    assert drain(spool, 37) == want
    assert spool.records == 0 and spool.pending_bytes == 0 and spool.quota.used == 0
    assert not list((tmp_path / "s").glob("*.seg"))  # an emptied log keeps no segment


def test_a_read_without_ack_is_read_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 1 << 30, segment_bytes=1000)
    want = records(40)
    spool.append(want)
    first = spool.read(15, 1 << 20)
    assert first.records == want[:15]
    assert spool.read(15, 1 << 20).records == want[:15]  # not acknowledged: same records
    spool.ack(first)
    assert spool.read(100, 1 << 20).records == want[15:]
    assert spool.read(100, 10).records == want[15:16]  # at least one record, even past bytes


def test_keys_and_topics_survive_framing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 1 << 20)
    spool.append([("transactions", "C0001", '{"a":1}'), ("decisions", None, b""),
                  ("x" * 200, b"\x00\xff", b"\n" * 3)])
    assert drain(spool) == [("transactions", b"C0001", b'{"a":1}'), ("decisions", None, b""),
                            ("x" * 200, b"\x00\xff", b"\n\n\n")]


def test_the_quota_bounds_the_bytes_on_disk(tmp_path: Path) -> None:
    quota = Quota(10_000)
    a = Spool(tmp_path / "a", quota, segment_bytes=3000)
    b = Spool(tmp_path / "b", quota, segment_bytes=3000)
    want = records(400)
    taken = a.append(want)
    assert 0 < taken < 400  # refused past the quota, and says where it stopped
    assert quota.used + len(frame(*want[taken])) > 10_000
    too_big = ("decisions", b"k", b"x" * (10_000 - quota.used))
    assert b.append([too_big]) == 0  # the quota is shared
    disk = sum(p.stat().st_size for p in tmp_path.rglob("*.seg"))
    assert disk == quota.used <= 10_000
    assert drain(a) == want[:taken]  # what it took is intact and in order
    assert quota.used == 0 and quota.room()
    assert b.append(want[:5]) == 5
    assert b.append(want[5:], force=True) == 395  # promised a place: taken past the quota
    assert quota.used > 10_000


def test_a_reopened_spool_goes_on_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, 1 << 30, segment_bytes=1500)
    want = records(300)
    spool.append(want[:200])
    batch = spool.read(130, 1 << 20)
    spool.ack(batch)
    spool.close()
    again = Spool(path, 1 << 30, segment_bytes=1500)
    assert again.records == 70
    assert again.pending_bytes == sum(len(frame(*r)) for r in want[130:200])
    assert again.quota.used == sum(p.stat().st_size for p in path.glob("*.seg"))
    again.append(want[200:])  # appended after the reopen: after the older records
    assert drain(again, 13) == want[130:]
    again.close()
    third = Spool(path, 1 << 30)  # emptied, reopened: nothing, numbering goes on
    assert third.records == 0
    third.append(want[:3])
    assert drain(third) == want[:3]


def test_a_torn_tail_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, 1 << 30)
    want = records(50)
    spool.append(want)
    spool.close()
    [seg] = path.glob("*.seg")
    whole = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash in the middle of a write: half a frame
        f.write(frame(*records(1, 99)[0])[:25])
    again = Spool(path, 1 << 30)
    assert again.corrupt_bytes == 25 and seg.stat().st_size == whole
    assert again.records == 50
    again.append(records(5, 50))
    assert drain(again) == want + records(5, 50)


def test_a_corrupt_frame_cuts_the_segment_there(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, 1 << 30)
    want = records(20)
    spool.append(want)
    spool.close()
    [seg] = path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    at = sum(len(frame(*r)) for r in want[:12])
    data[at + 15] ^= 0xFF  # a flipped bit in the 13th record's body
    seg.write_bytes(bytes(data))
    again = Spool(path, 1 << 30)
    assert again.records == 12 and again.corrupt_bytes == len(data) - at
    assert drain(again) == want[:12]


def test_a_lost_cursor_republishes_rather_than_loses(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, 1 << 30, segment_bytes=800)
    want = records(60)
    spool.append(want)
    batch = spool.read(25, 1 << 20)
    spool.ack(batch)
    spool.close()
    (path / "cursor").write_bytes(b"{not json")
    again = Spool(path, 1 << 30, segment_bytes=800)
    got = drain(again)
    assert got[-35:] == want[25:]  # nothing lost; some acknowledged ones come again
    assert len(got) >= 35
