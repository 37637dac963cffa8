"""Trees without MPI: the walk, the stream (source → sink), the node's comparison with
what stands at its destination, and the commit's semantics."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treelisting import listing, rsync_differences

from mpistage import UsageError
from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.plan import Plan, SourceInfo
from mpistage.sinks import tree as sinks_tree
from mpistage.sinks.tree import TreeSink
from mpistage.sources.manifest import (DIRECTORY, FILE, SYMLINK, TRAILER, Manifest, read_list, walk,
                                       walk_list)
from mpistage.sources.tree import TreeSource
from mpistage.staging.treecheck import _Local, _root_digests, resolve_tops, top_entries
from mpistage.staging.treecopy import TreeCopy

MTIME = 1_600_000_000_123_456_789


def make_tree(root: Path) -> Path:
    """``root/data``: nested files (one empty, one larger than a chunk), an empty
    directory, a relative symlink and a dangling one."""
    data = root / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "empty-dir").mkdir()
    (data / "a.txt").write_text("hello\n")
    (data / "empty").write_bytes(b"")
    (data / "big.bin").write_bytes(os.urandom(200_000))
    (data / "sub" / "deeper" / "x").write_bytes(os.urandom(5000))
    (data / "sub" / "link").symlink_to("../a.txt")
    (data / "dangling").symlink_to("nowhere")
    os.chmod(data / "a.txt", 0o640)
    for path in sorted(data.rglob("*"), reverse=True):
        os.utime(path, ns=(0, MTIME), follow_symlinks=False)
    return data


def node_view(manifest: Manifest, dest: Path, *, quick: bool = False) -> _Local:
    """What check_tree finds on one node, without MPI (the root's digests computed here)."""
    finals = resolve_tops(top_entries(manifest), str(dest), mkdir=False)
    local = _Local(manifest, finals, quick=quick)
    local.compare()
    order = [i for i in range(len(manifest)) if local.candidates[i]]
    if not quick:
        local.settle(bytes(_root_digests(manifest, order)), order)
    local.mark_metadata()
    return local


def stage_locally(manifest: Manifest, dest: Path, *, chunk: int = 4096, quick: bool = False,
                  delete: bool = False, corrupt_at: int | None = None, fsync: bool = False,
                  before_read=None) -> tuple[TreeSink, TreeSource]:  # type: ignore[no-untyped-def]
    """What one node does, without MPI: compare, stream, commit."""
    local = node_view(manifest, dest, quick=quick)
    if delete:
        local.mark_extras()
    needed = bytearray(local.wants)
    size = TreeCopy(manifest, needed, None).bytes_in_stream
    info = SourceInfo(source="tree", size=size, mode=0, mtime_ns=0,
                      dest=str(dest))
    plan = Plan.of(info, chunk_size=chunk, algorithm="chain")
    pool = BufferPool(2, chunk)
    if before_read is not None:
        before_read()
    source = TreeSource(plan, pool, PhaseClock(), manifest=manifest, needed=needed)
    sink = TreeSink(manifest, needed, local.node_tree(), delete=delete, verify=True, fsync=fsync)
    source.start()
    position = 0
    for _ in range(plan.nchunks):
        k, index = source.next_chunk(10, excused=lambda: False)
        view = pool.buffers[index][: plan.chunk_length(k)]
        if corrupt_at is not None and position <= corrupt_at < position + len(view):
            view[corrupt_at - position] ^= 0xFF
        position += len(view)
        sink.write(view)
        pool.release(index)
    source.join(10)
    if source.error is None and sink.error is None:
        assert sink.finished()
        sink.commit(verify=True, fsync=fsync)
    else:
        sink.discard()
    return sink, source


# -- the walk -------------------------------------------------------------------------------

def test_walk_lists_every_entry_once_parents_first(tmp_path: Path) -> None:
    make_tree(tmp_path)
    manifest = walk([tmp_path / "data"])
    paths = [manifest.path(i).decode() for i in range(len(manifest))]
    assert paths[0] == "data" and len(paths) == len(set(paths)) == 10
    for index, path in enumerate(paths):
        if "/" in path:
            assert paths.index(path.rsplit("/", 1)[0]) < index, "a directory before its contents"
    kinds = {manifest.path(i).decode(): manifest.kinds[i] for i in range(len(manifest))}
    assert kinds["data/sub/link"] == SYMLINK and kinds["data/empty-dir"] == DIRECTORY
    assert kinds["data/big.bin"] == FILE
    link = paths.index("data/sub/link")
    assert manifest.link(link) == b"../a.txt" and manifest.sizes[link] == 0
    assert manifest.file_count == 4 and manifest.total_bytes == 205_006
    assert manifest.top_names() == [b"data"]


def test_several_sources_keep_their_names(tmp_path: Path) -> None:
    for name in ("model.bin", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"x" * 10)
    manifest = walk([tmp_path / "model.bin", tmp_path / "tokenizer.json"])
    assert manifest.top_names() == [b"model.bin", b"tokenizer.json"]
    with pytest.raises(UsageError, match="two sources are named 'model.bin'"):
        walk([tmp_path / "model.bin", tmp_path / "." / "model.bin"])


def test_special_files_are_refused_by_name_or_left_out(tmp_path: Path) -> None:
    data = make_tree(tmp_path)
    os.mkfifo(data / "sub" / "pipe")
    with pytest.raises(UsageError, match=r"1 special file .*sub/pipe \(a FIFO\).*--skip-special"):
        walk([data])
    manifest = walk([data], skip_special=True)
    assert len(manifest.skipped) == 1 and "pipe" in manifest.skipped[0]
    assert b"data/sub/pipe" not in [manifest.path(i) for i in range(len(manifest))]


def test_unreadable_files_are_refused_before_anything_moves(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_tree(tmp_path)
    os.chmod(data / "a.txt", 0o644)
    os.chmod(data / "sub" / "deeper" / "x", 0o200)
    monkeypatch.setattr(os, "geteuid", lambda: 12345)  # not root, not the owner
    monkeypatch.setattr(os, "getegid", lambda: 12345)
    monkeypatch.setattr(os, "getgroups", lambda: [])
    os.chmod(data, 0o755)
    for directory in (data / "sub", data / "sub" / "deeper", data / "empty-dir"):
        os.chmod(directory, 0o755)
    with pytest.raises(UsageError, match=r"deeper/x' is not readable"):
        walk([data])


def test_file_list_keeps_paths_relative_and_brings_parents(tmp_path: Path) -> None:
    data = make_tree(tmp_path)
    listfile = tmp_path / "list"
    listfile.write_bytes(b"sub/deeper/x\0a.txt\0\0sub/deeper/x\0")
    manifest = walk_list(read_list(listfile, nul=True), data)
    assert [manifest.path(i) for i in range(len(manifest))] == [
        b"sub", b"sub/deeper", b"sub/deeper/x", b"a.txt"]
    listfile.write_text("sub\n\n")  # a directory comes whole
    manifest = walk_list(read_list(listfile), data)
    assert b"sub/link" in [manifest.path(i) for i in range(len(manifest))]
    (data / "via").symlink_to(tmp_path)
    for bad, message in (("/etc/passwd", "is absolute"), ("../x", "is not below --base"),
                         ("missing", "does not exist"),
                         ("via/data/a.txt", "goes through 'via', which is not a directory")):
        with pytest.raises(UsageError, match=message):
            walk_list([bad.encode()], data)


def test_a_million_entries_take_bounded_memory() -> None:
    """The manifest is columns, not objects: ~40 bytes an entry plus its path, what
    :meth:`Manifest.bcast` moves as buffers."""
    template = os.lstat(__file__)
    manifest = Manifest()
    for index in range(1_000_000):
        manifest.add(b"dataset/shard-%04d/file-%07d" % (index // 1000, index), template)
    assert len(manifest) == 1_000_000 and manifest.file_count == 1_000_000
    path_bytes = len(manifest.path_blob)
    assert path_bytes == 1_000_000 * 31
    assert manifest.nbytes() - path_bytes <= 1_000_000 * 41
    columns = (manifest.kinds, manifest.sizes, manifest.modes, manifest.mtimes,
               manifest.path_blob, manifest.path_ends, manifest.link_blob, manifest.link_ends,
               manifest.origins, manifest.identities)
    held = sum(sys.getsizeof(column) for column in columns)
    assert held < 160 << 20, f"{held >> 20} MiB for a million entries"
    assert manifest.path(999_999) == b"dataset/shard-0999/file-0999999"


# -- stream and commit ----------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [3, 16, 17, 4096, 1 << 20])
def test_a_tree_arrives_whole_with_modes_mtimes_and_links(tmp_path: Path, chunk: int) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    sink, source = stage_locally(walk([data]), dest, chunk=chunk)
    assert source.error is None and sink.error is None
    assert listing(dest / "data") == listing(data)
    assert rsync_differences(data, dest / "data") == []
    assert sink.files_written == 4
    assert [n for n in os.listdir(dest) if n.endswith(".mpistage-tmp")] == []


def test_a_setgid_directory_keeps_its_bit_files_never(tmp_path: Path) -> None:
    """A group-shared directory (setgid: new entries inherit its group) stays one, as
    with ``cp -a`` and ``rsync -p``; a setuid or setgid *file* loses both bits."""
    data = make_tree(tmp_path / "src")
    os.chmod(data / "sub", 0o2755)
    os.chmod(data / "sub" / "deeper" / "x", 0o6755)
    dest = tmp_path / "dest"
    dest.mkdir()
    sink, source = stage_locally(walk([data]), dest)
    assert source.error is None and sink.error is None
    assert stat.S_IMODE(os.stat(dest / "data" / "sub").st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(dest / "data" / "sub" / "deeper" / "x").st_mode) == 0o755
    # rsync -p would carry the file's bits over too; the directory's agree
    assert rsync_differences(data, dest / "data") == [".f...p..... sub/deeper/x"]
    # and a rerun finds the directory as it should be: nothing to send, nothing to fix
    assert node_view(walk([data]), dest).changed == set()


def test_dest_named_like_cp_dash_r(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    sink, _ = stage_locally(walk([data]), tmp_path / "copy", fsync=True)  # the new name
    assert listing(tmp_path / "copy") == listing(data)
    assert rsync_differences(data, tmp_path / "copy") == []
    assert "verify" in sink.timings and "rename" in sink.timings


def test_a_rerun_sends_only_what_changed(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    sink, _ = stage_locally(walk([data]), dest)
    assert sink.files_written == 0 and sink.tree.changed == set()
    (data / "sub" / "deeper" / "x").write_bytes(b"new")
    before = (dest / "data" / "big.bin").stat().st_ino
    sink, _ = stage_locally(walk([data]), dest)
    assert sink.files_written == 1 and sink.bytes_written == 3
    assert listing(dest / "data") == listing(data)
    assert rsync_differences(data, dest / "data") == []
    assert (dest / "data" / "big.bin").stat().st_ino == before, "unchanged files linked, not copied"


def test_quick_trusts_size_and_mtime(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    copy = dest / "data" / "a.txt"
    copy.write_text("HELLO\n")
    os.utime(copy, ns=(0, MTIME))
    sink, _ = stage_locally(walk([data]), dest, quick=True)
    assert sink.files_written == 0 and copy.read_text() == "HELLO\n"
    sink, _ = stage_locally(walk([data]), dest)
    assert sink.files_written == 1 and copy.read_text() == "hello\n"


def test_extras_are_kept_unless_delete(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    (dest / "data" / "sub" / "mine.txt").write_text("a user's file")
    (dest / "data" / "extra-dir" / "inner").mkdir(parents=True)
    (data / "a.txt").write_text("changed\n")
    stage_locally(walk([data]), dest)
    assert (dest / "data" / "sub" / "mine.txt").read_text() == "a user's file"
    assert (dest / "data" / "extra-dir" / "inner").is_dir()
    assert (dest / "data" / "a.txt").read_text() == "changed\n"
    stage_locally(walk([data]), dest, delete=True)
    assert listing(dest / "data") == listing(data)
    assert rsync_differences(data, dest / "data") == []


def test_a_symlink_planted_in_dest_is_replaced_never_followed(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text("precious")
    (dest / "data").mkdir()
    (dest / "data" / "sub").symlink_to(elsewhere)           # a directory symlink inside
    (dest / "data" / "a.txt").symlink_to(elsewhere / "a.txt")  # a file symlink
    stage_locally(walk([data]), dest)
    assert listing(dest / "data") == listing(data)
    assert rsync_differences(data, dest / "data") == []
    assert os.listdir(elsewhere) == ["a.txt"] and (elsewhere / "a.txt").read_text() == "precious"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data").symlink_to(elsewhere)  # the top-level entry itself
    stage_locally(walk([data]), other)
    assert not (other / "data").is_symlink() and listing(other / "data") == listing(data)
    assert os.listdir(elsewhere) == ["a.txt"]


def test_a_corrupted_byte_fails_that_file_and_nothing_appears(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    sink, source = stage_locally(walk([data]), dest, corrupt_at=100_000)
    assert source.error is None and sink.error is not None
    assert "digest mismatch on data/" in sink.error
    assert os.listdir(dest) == []


def test_a_corrupted_digest_is_caught_too(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = walk([data])
    first = next(manifest.files())
    sink, _ = stage_locally(manifest, dest, corrupt_at=manifest.sizes[first] + 3)
    assert sink.error is not None and os.listdir(dest) == []


def test_a_file_changed_after_the_walk_fails_the_tree(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = walk([data])
    sink, source = stage_locally(
        manifest, dest, before_read=lambda: (data / "sub" / "deeper" / "x").write_bytes(b"new"))
    assert source.error is not None and "deeper/x changed size (5000 to 3 bytes)" in source.error
    assert "no copy of the tree was kept" in source.error
    assert os.listdir(dest) == []


def test_the_old_tree_stays_whole_until_the_swap(tmp_path: Path) -> None:
    """A failed re-run leaves the previous tree exactly as it was."""
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    before = listing(dest / "data")
    (data / "big.bin").write_bytes(os.urandom(200_000))
    sink, _ = stage_locally(walk([data]), dest, corrupt_at=10)
    assert sink.error is not None
    assert listing(dest / "data") == before
    assert [n for n in os.listdir(dest) if n != "data"] == []


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
       chunk=st.integers(1, 5000), keep=st.lists(st.booleans(), min_size=12, max_size=12))
def test_any_tree_any_chunk_any_prior_state(tmp_path_factory: pytest.TempPathFactory,
                                            sizes: list[int], chunk: int, keep: list[bool]) -> None:
    """Whatever the sizes, the chunk and which files a node already has, it ends with
    the source's tree and received only the files it lacked."""
    root = tmp_path_factory.mktemp("any")
    data = root / "src" / "t"
    (data / "d").mkdir(parents=True)
    for number, size in enumerate(sizes):
        (data / ("d" if number % 2 else ".") / f"f{number}").write_bytes(os.urandom(size))
    dest = root / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest, chunk=chunk)
    changed = 0
    for number, size in enumerate(sizes):
        if not keep[number]:
            (data / ("d" if number % 2 else ".") / f"f{number}").write_bytes(os.urandom(size + 1))
            changed += 1
    sink, source = stage_locally(walk([data]), dest, chunk=chunk)
    assert source.error is None and sink.error is None
    assert sink.files_written == changed
    assert {k: v[:2] for k, v in listing(dest / "t").items()} == \
        {k: v[:2] for k, v in listing(data).items()}
    assert TRAILER == 16


def test_preflight_counts_inodes_as_well_as_bytes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mpistage.staging.preflight import NodeCheck
    from mpistage.staging.treecheck import _count_needs

    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = walk([data])
    local = _Local(manifest, resolve_tops(top_entries(manifest), str(dest), mkdir=False),
                   quick=False)
    local.compare()
    real = os.statvfs(dest)

    class Few:  # plenty of bytes, 5 inodes
        f_bavail, f_frsize, f_files, f_favail = real.f_bavail, real.f_frsize, 1000, 5

    monkeypatch.setattr(os, "statvfs", lambda path: Few)
    check = _count_needs(NodeCheck(index=0, host="h", rank=0, target=str(dest)), local,
                         manifest, remove_first=False)
    assert check.problem == f"not enough inodes in {dest}: 5 free, 10 needed"
    assert (check.files_wanted, check.bytes_wanted) == (4, 205_006)


@pytest.mark.parametrize("quick", [False, True])
def test_a_copy_whose_mode_or_mtime_differs_is_fixed_without_its_bytes(tmp_path: Path,
                                                                       quick: bool) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    copy = dest / "data" / "sub" / "deeper" / "x"
    os.chmod(copy, 0o600)
    if not quick:  # --quick takes a different mtime for different content
        os.utime(copy, ns=(0, 5))
    inode = copy.stat().st_ino
    sink, _ = stage_locally(walk([data]), dest, quick=quick)
    assert sink.files_written == 0 and sink.bytes_written == 0
    assert copy.stat().st_ino == inode, "the same file, linked into the new tree"
    assert listing(dest / "data") == listing(data)
    assert rsync_differences(data, dest / "data") == []


def test_remove_first_deletes_each_outdated_file_before_its_bytes(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_locally(walk([data]), dest)
    old = dest / "data" / "big.bin"
    link = tmp_path / "held"
    os.link(old, link)  # a second name, to see the old file's fate
    (data / "big.bin").write_bytes(os.urandom(200_000))
    manifest = walk([data])
    local = node_view(manifest, dest)
    tree = local.node_tree()
    sink = TreeSink(manifest, bytearray(local.wants), tree, remove_first=True)
    sinks_tree._remove_old(tree.final_of(b"data/big.bin"))  # what opening its file does first
    assert link.stat().st_nlink == 1, "the outdated copy was unlinked before its bytes came"
    sink.discard()


def test_a_source_named_as_a_symlink_is_followed_links_inside_are_not(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    (tmp_path / "alias").symlink_to(data)
    manifest = walk([tmp_path / "alias"])
    assert manifest.path(0) == b"alias" and manifest.kinds[0] == DIRECTORY
    assert manifest.file_count == 4
    kinds = {manifest.path(i): manifest.kinds[i] for i in range(len(manifest))}
    assert kinds[b"alias/sub/link"] == SYMLINK


def test_sources_named_as_symlinks_are_staged_as_what_they_point_to(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src")
    (tmp_path / "alias").symlink_to(data)
    (tmp_path / "file-alias").symlink_to(data / "big.bin")
    dest = tmp_path / "dest"
    dest.mkdir()
    sink, source = stage_locally(walk([tmp_path / "alias", tmp_path / "file-alias"]), dest)
    assert source.error is None and sink.error is None
    assert listing(dest / "alias") == listing(data)
    assert rsync_differences(data, dest / "alias") == []
    assert (dest / "file-alias").read_bytes() == (data / "big.bin").read_bytes()
