"""Teacher cache on disk: round trip, damage detection and rebuild, locking across processes, list and remove."""
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from leankd.distill.cache import TeacherCache, list_caches, remove_cache
from leankd.errors import CheckpointError

N, VIEWS, SHARD = 1000, 3, 300  # 4 shards, the last one of 100 samples
FIELDS = {"logits": ((10,), "float32"), "feats": ((2, 3), "float16")}
KEY = {"teacher": "abc123", "data": "toy-1000", "views": "flip+crop", "dtype": "mixed"}


def reference(field: str) -> np.ndarray:
    """What the 'teacher' outputs: (views, N, *shape) in float64, deterministic."""
    shape, _ = FIELDS[field]
    return np.random.default_rng(len(field)).normal(size=(VIEWS, N, *shape))


def fill_all(writer, counter: Path | None = None, sleep: float = 0.0) -> None:
    """Write every sample of every view in shuffled batches of 64, as a teacher job would."""
    if counter is not None:
        with open(counter, "a") as f:
            f.write("fill\n")
    time.sleep(sleep)
    rng = np.random.default_rng(0)
    for field in FIELDS:
        ref = reference(field)
        for view in range(VIEWS):
            for batch in np.array_split(rng.permutation(N), N // 64):
                writer.write(field, view, batch, ref[view, batch])
    writer.info["build_seconds"] = 0.5


def build(root: Path, counter: Path | None = None, key: dict = KEY, sleep: float = 0.0) -> dict:
    return TeacherCache(root, key).build(N, VIEWS, FIELDS, lambda w: fill_all(w, counter, sleep), shard_size=SHARD)


def fills(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def check_reads_back(cache: TeacherCache) -> None:
    reader = cache.reader()
    rng = np.random.default_rng(1)
    index = rng.integers(0, N, size=257)  # duplicates and every shard, unsorted
    views = rng.integers(0, VIEWS, size=257)
    for field, (shape, dtype) in FIELDS.items():
        ref = reference(field).astype(dtype)
        out = reader.get(field, views, index)
        assert out.shape == (257, *shape) and out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, ref[views, index])
        np.testing.assert_array_equal(reader.get(field, 2, index), ref[2, index])
    reader.close()


def test_round_trip(tmp_path):
    manifest = build(tmp_path)
    cache = TeacherCache(tmp_path, KEY)
    assert cache.is_valid() and cache.path.is_dir()
    assert manifest["num_samples"] == N and manifest["views"] == VIEWS and manifest["shard_size"] == SHARD
    assert manifest["fields"]["feats"] == {"shape": [2, 3], "dtype": "float16"}
    assert len(manifest["files"]) == 2 * VIEWS * 4 and manifest["info"] == {"build_seconds": 0.5}
    assert np.load(cache.path / "logits-v2-s3.npy").shape == (100, 10)
    check_reads_back(cache)
    assert cache.reader().manifest["key"] == KEY


def _flip_byte(cache: TeacherCache) -> None:
    shard = cache.path / "logits-v1-s2.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))


def _wrong_key(cache: TeacherCache) -> None:
    manifest = (cache.path / "manifest.json").read_text()
    (cache.path / "manifest.json").write_text(manifest.replace('"abc123"', '"other"'))


def _missing_shard(cache: TeacherCache) -> None:
    (cache.path / "feats-v0-s3.npy").unlink()


def _truncated_manifest(cache: TeacherCache) -> None:
    text = (cache.path / "manifest.json").read_text()
    (cache.path / "manifest.json").write_text(text[: len(text) // 2])


@pytest.mark.parametrize("damage", [_flip_byte, _wrong_key, _missing_shard, _truncated_manifest])
def test_damage_is_detected_and_rebuilt(tmp_path, damage):
    counter = tmp_path / "fills.txt"
    root = tmp_path / "caches"
    build(root, counter)
    cache = TeacherCache(root, KEY)
    damage(cache)
    assert not cache.is_valid()
    with pytest.raises(CheckpointError) as err:
        cache.reader()
    message = str(err.value)
    assert "\n" not in message and str(cache.path) in message and "leankd cache rm" in message
    build(root, counter)
    assert fills(counter) == 2 and cache.is_valid()
    check_reads_back(cache)


def test_garbage_manifest_is_invalid_not_an_error(tmp_path):
    cache = TeacherCache(tmp_path, KEY)
    assert not cache.is_valid()  # no folder at all
    cache.path.mkdir()
    for garbage in ["", "[1, 2]", '{"key": 1}', "\x00\xff"]:
        (cache.path / "manifest.json").write_text(garbage)
        assert not cache.is_valid()


def test_second_build_does_not_fill(tmp_path):
    counter = tmp_path / "fills.txt"
    first = build(tmp_path / "c", counter)
    second = build(tmp_path / "c", counter)
    assert fills(counter) == 1 and second == first


def test_fill_crash_leaves_nothing_and_next_build_succeeds(tmp_path):
    cache = TeacherCache(tmp_path, KEY)

    def crash(writer):
        writer.write("logits", 0, np.arange(10), np.zeros((10, 10)))
        raise RuntimeError("teacher died")

    with pytest.raises(RuntimeError, match="teacher died"):
        cache.build(N, VIEWS, FIELDS, crash, shard_size=SHARD)
    assert not cache.path.exists() and not list(tmp_path.glob(".tmp-*"))
    # A hard crash (killed process) leaves its temp folder behind; the next build clears it.
    stale = tmp_path / f".tmp-{cache.name}-999999-deadbeef"
    stale.mkdir()
    (stale / "logits-v0-s0.npy").write_bytes(b"partial")
    build(tmp_path)
    assert cache.is_valid() and not stale.exists()
    check_reads_back(cache)


def test_incomplete_fill_is_refused(tmp_path):
    cache = TeacherCache(tmp_path, KEY)
    with pytest.raises(ValueError, match="unwritten"):
        cache.build(N, VIEWS, FIELDS, lambda w: w.write("logits", 0, np.arange(N), np.zeros((N, 10))), SHARD)
    assert not cache.path.exists()


def test_bad_writes_and_reads_are_refused(tmp_path):
    def bad(writer):
        with pytest.raises(ValueError, match="did you mean 'logits'"):
            writer.write("logit", 0, np.arange(3), np.zeros((3, 10)))
        with pytest.raises(ValueError, match="shape"):
            writer.write("logits", 0, np.arange(3), np.zeros((3, 9)))
        with pytest.raises(TypeError, match="cannot cast"):
            writer.write("targets", 0, np.arange(3), np.zeros(3))  # float into an int field
        with pytest.raises(IndexError):
            writer.write("logits", VIEWS, np.arange(3), np.zeros((3, 10)))
        writer.write("logits", 0, np.arange(4), np.ones((4, 10), dtype=np.float64))
        writer.write("targets", 0, np.arange(4), np.arange(4, dtype=np.int32))

    cache = TeacherCache(tmp_path, KEY)
    cache.build(4, 1, {"logits": ((10,), "float32"), "targets": ((), "int64")}, bad, shard_size=3)
    reader = cache.reader()
    np.testing.assert_array_equal(reader.get("targets", 0, [3, 0]), [3, 0])
    with pytest.raises(IndexError):
        reader.get("logits", 0, [4])


def _build_in_child(root: str, counter: str) -> None:
    build(Path(root), Path(counter), sleep=0.5)


def test_two_processes_build_once(tmp_path):
    counter = tmp_path / "fills.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path / "c"), str(counter))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    cache = TeacherCache(tmp_path / "c", KEY)
    assert cache.is_valid() and fills(counter) == 1  # the second waited on the lock, then found a valid cache
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == [cache.name]
    check_reads_back(cache)


def test_list_and_remove(tmp_path):
    other = {**KEY, "teacher": "def456"}
    build(tmp_path)
    build(tmp_path, key=other)
    a, b = TeacherCache(tmp_path, KEY), TeacherCache(tmp_path, other)
    listed = {c["name"]: c for c in list_caches(tmp_path)}
    assert set(listed) == {a.name, b.name}  # lock files are not caches
    on_disk = sum(f.stat().st_size for f in a.path.iterdir())
    assert listed[a.name]["bytes"] == a.size_bytes() == on_disk > 0
    assert listed[b.name]["valid"] and listed[b.name]["key"] == other and listed[b.name]["created_at"]
    _flip_byte(b)
    assert not {c["name"]: c for c in list_caches(tmp_path)}[b.name]["valid"]
    with pytest.raises(CheckpointError, match=f"did you mean '{a.name}'"):
        remove_cache(tmp_path, a.name[:-1] + "x")
    assert remove_cache(tmp_path, a.name) == on_disk
    assert not a.path.exists() and a.size_bytes() == 0
    assert [c["name"] for c in list_caches(tmp_path)] == [b.name]
    assert list_caches(tmp_path / "nowhere") == []
