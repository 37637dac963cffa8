import json
from pathlib import Path

from mpistage.staging.report import SCHEMA, NodeResult, RankRecord, StageReport


def sample(ok: bool = True) -> StageReport:
    nodes = [
        NodeResult(index=0, host="a", rank=0, path="/s/f", status="copied", digest="d", bytes=10),
        NodeResult(index=1, host="b", rank=1, path="/s/f", status="copied" if ok else "failed",
                   bytes=4,
                   error=None if ok else "write to /s/f failed: [Errno 28] No space left"),
    ]
    ranks = [
        RankRecord(rank=0, node=0, host="a", leader=True,
                   phases={"startup": 0.5, "read": 0.2, "write": 0.1, "total": 1.0}),
        RankRecord(rank=1, node=1, host="b", leader=True,
                   phases={"startup": 0.4, "write": 0.3, "total": 1.5}),
        RankRecord(rank=2, node=1, host="b", leader=False, phases={"startup": 0.4, "total": 1.6}),
    ]
    return StageReport(version="0", source="/src/f", size=10, source_digest="d",
                       algorithm="chain", chunk_size=4, depth=4, nodes=nodes, ranks=ranks, ok=ok)


def test_phase_statistics_over_leaders_only() -> None:
    stats = sample().phase_stats()
    assert stats["write"] == {"min": 0.1, "median": 0.2, "max": 0.3, "slowest_node": 1}
    assert stats["read"]["slowest_node"] == 0
    assert stats["total"]["max"] == 1.5, "non-leader ranks do not enter node statistics"
    assert list(stats) == ["startup", "read", "write", "total"], "phases in run order"


def test_elapsed_is_the_slowest_rank() -> None:
    assert sample().elapsed == 1.6


def test_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    sample(ok=False).write_json(out)
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA
    assert (data["ok"], data["exit_code"], data["node_count"], data["rank_count"]) == (False, 1, 2, 3)
    assert data["source"] == {"path": "/src/f", "size": 10, "digest": "d",
                              "digest_algorithm": "xxh3_128", "error": None,
                              "read_by": "root"}
    assert data["nodes"][1]["error"].startswith("write to /s/f failed")
    assert (data["nodes"][1]["status"], data["nodes"][1]["ok"]) == ("failed", False)
    assert (data["stalled"], data["stall"], data["missing_ranks"]) == (False, None, [])
    assert data["ranks"][2] == {"rank": 2, "node": 1, "host": "b", "leader": False,
                                "phases": {"startup": 0.4, "total": 1.6}}
    assert set(data["phases"]["write"]) == {"min", "median", "max", "slowest_node"}
    assert list(tmp_path.iterdir()) == [out]


def test_report_file_is_written_safely_beside_planted_symlinks(tmp_path: Path) -> None:
    """No predictable temp name: a symlink planted at the old ``FILE.tmp-PID`` name (or
    anywhere) is neither written through nor renamed into place."""
    import os

    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "r.json"
    for pid in (os.getpid(), os.getpid() + 1):
        (tmp_path / f"r.json.tmp-{pid}").symlink_to(victim)
    old = os.umask(0o022)
    try:
        sample().write_json(out)
    finally:
        os.umask(old)
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and json.loads(out.read_text())["ok"] is True
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim", "r.json", f"r.json.tmp-{os.getpid()}", f"r.json.tmp-{os.getpid() + 1}"])


def test_summary_names_the_failed_node() -> None:
    text = sample(ok=False).summary()
    assert "FAILED: 1 of 2 nodes hold a verified copy" in text
    assert "node 1 (b, rank 1): failed: write to /s/f failed" in text
    assert "all 2 nodes hold a verified copy" in sample().summary()


def test_summary_of_a_stalled_run_and_up_to_date_nodes() -> None:
    report = sample(ok=False)
    report.nodes[0].status = "up-to-date"
    report.stalled, report.missing_ranks = True, [2, 3, 4, 7]
    report.stall = "transfer stalled: node 1 (b): no data from node 0 (a) for 5 s"
    text = report.summary()
    assert "  transfer stalled: node 1 (b): no data from node 0 (a) for 5 s" in text
    assert "no status from ranks 2-4, 7 (dead or unreachable)" in text
    assert "up to date already, nothing sent: nodes 0" in text


def test_summary_wording_when_nothing_moved_or_the_file_is_empty() -> None:
    report = sample()
    for node in report.nodes:
        node.status = "up-to-date"
    report.source_digest = None
    first, second = report.summary().splitlines()[:2]
    assert first.endswith("nothing to send") and "0 us" not in first and " - " not in first
    assert second == "  all 2 nodes were up to date already; nothing was sent"
    assert "None" not in report.summary()
    report = sample()
    report.size = 0
    report.ranks[0].phases["transfer"] = 0.002
    report.nodes = report.nodes[:1]
    first, second = report.summary().splitlines()[:2]
    assert first.endswith("transfer 2.0 ms (an empty file)")
    assert second == "  the node holds a verified copy (xxh3_128 d)"


def test_summary_holds_the_prediction_against_the_measurement() -> None:
    report = sample()
    report.ranks[0].phases["transfer"] = 2.0
    report.prediction = {"source": "quick measurement", "predicted": 1.5, "auto": True}
    assert ("model (quick link probe, disks not measured): predicted transfer 1.50 s "
            "(chosen by the model), measured 2.00 s (-25%)") in report.summary()
    report.prediction = {"source": "calibration", "predicted": 2.2, "auto": False}
    assert "model (calibration): predicted transfer 2.20 s, measured 2.00 s (+10%)" in report.summary()
    assert report.to_dict()["prediction"]["source"] == "calibration"
