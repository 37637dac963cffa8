"""Which nodes' copies would be one file (mpistage.staging.shared_dest), without MPI."""

from __future__ import annotations

import os

from mpistage.staging.preflight import NodeCheck
from mpistage.staging.shared_dest import describe, same_files


def check(index: int, target: str, host: str = "h") -> NodeCheck:
    return NodeCheck(index=index, host=f"{host}{index}", rank=index, target=target)


def test_one_machine_tells_by_device_and_inode() -> None:
    identities = [(0, "boot", (1, 7), "a"), (1, "boot", (1, 7), "a"), (2, "boot", (1, 7), "b")]
    assert same_files(identities, []) == [[0, 1]]  # node 2: another name


def test_one_directory_two_names_two_files_whoever_comes_first() -> None:
    identities = [(0, "boot", (1, 7), "a"), (1, "boot", (1, 7), "b"), (2, "boot", (1, 7), "b")]
    assert same_files(identities, []) == [[1, 2]]


def test_equal_numbers_on_two_machines_mean_nothing_markers_do() -> None:
    identities = [(n, f"boot{n}", (1, 7), "a") for n in range(4)]  # tmpfs on each
    assert same_files(identities, []) == []
    # nodes 1 and 3 see each other's markers: one shared file system at DEST
    assert same_files(identities, [(1, [3]), (3, [1])]) == [[1, 3]]


def test_a_directory_already_there_is_its_own_spot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mpistage.staging.shared_dest import _Spot

    (tmp_path / "tree").mkdir()
    os.utime(tmp_path / "tree", ns=(5, 1_600_000_000_000_000_007))
    spot = _Spot.of(check(0, str(tmp_path / "tree")), "run")
    assert (spot.directory, spot.name) == (tmp_path / "tree", "")
    spot.leave_marker()
    spot.remove_marker()  # a staged tree's directory keeps the source's mtime
    assert os.stat(tmp_path / "tree").st_mtime_ns == 1_600_000_000_000_000_007
    spot = _Spot.of(check(0, str(tmp_path / "file.dat")), "run")
    assert (spot.directory, spot.name) == (tmp_path, "file.dat")
    spot.leave_marker()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mpistage-who-")] == \
        [".mpistage-who-run-0"]
    spot.remove_marker()
    assert not any(p.name.startswith(".mpistage-who-") for p in tmp_path.iterdir())


def test_the_line_names_the_nodes_the_file_and_the_fix() -> None:
    checks = [check(n, "/tmp/out/in.dat") for n in range(3)]
    line = describe([[0, 1, 2]], checks)
    assert line == ("nodes 0 (h0), 1 (h1) and 2 (h2) would all write /tmp/out/in.dat: one "
                    "file on a file system they share; put {node} in DEST (e.g. "
                    "/tmp/out/{node}/in.dat, with --mkdir) so that each node has its own copy, "
                    "or --shared-dest to write it once")
    many = [check(n, "/p/x") for n in range(10)]
    assert "0 (h0), 1 (h1), 2 (h2) and 7 more" in describe([list(range(10)), [0, 1]], many)


def test_a_sharer_reads_the_writers_file_and_catches_a_wrong_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mpistage.digest import file_digest
    from mpistage.staging.report import NodeResult
    from mpistage.staging.shared_dest import _check_in_place

    path = tmp_path / "in.dat"
    path.write_bytes(b"the source")
    digest = file_digest(path)
    results = {n: NodeResult(index=n, host=f"h{n}", rank=n, path=str(path), status=s,
                             digest=digest)
               for n, s in ((0, "copied"), (1, "up-to-date"))}
    sharer = check(1, str(path))
    beats: list[object] = []
    assert _check_in_place(sharer, results, 0, digest, 5.0, beats.append) == (1, "shared", None)
    path.write_bytes(b"something else")
    node, status, error = _check_in_place(sharer, results, 0, digest, 5.0, beats.append)
    assert status == "failed" and "does not match the source's digest" in str(error)
    path.unlink()
    node, status, error = _check_in_place(sharer, results, 0, digest, 5.0, beats.append)
    assert status == "failed" and error.startswith(f"cannot read {path}")  # type: ignore[union-attr]
    results[0] = NodeResult(index=0, host="h0", rank=0, path=str(path), status="failed")
    assert _check_in_place(sharer, results, 0, digest, 5.0, beats.append)[2] == \
        "node 0, which writes this node's file, failed"
