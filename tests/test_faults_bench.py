"""bench/faults.py: the docs' fault figures are what the tests recorded, rendered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import faults  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_faults" file="tests/test_faults.py"
 name="test_a_lost_node_costs_only_itself[kill a middle node-default options]" time="21.5">
 <properties><property name="seconds_to_report" value="9.61"/>
 <property name="elapsed" value="9.6"/><property name="fault_free" value="3.7"/>
 <property name="plan" value="chain, 131072 B chunks"/>
 <property name="mpiexec_status" value="1"/></properties></testcase>
<testcase classname="tests.test_faults" file="tests/test_faults.py"
 name="test_a_lost_node_costs_only_itself[kill two nodes apart-default options]" time="9">
 <skipped type="pytest.xfail" message="MPICH's OFI transport made the lost connection fatal"/>
</testcase>
<testcase classname="tests.test_faults" file="tests/test_faults.py"
 name="test_c_rank_killed_under_a_launcher_that_ends_the_job" time="12">
 <properties><property name="seconds_to_report" value="0.03"/>
 <property name="mpiexec_status" value="137"/></properties></testcase>
</testsuite></testsuites>"""

KILLS = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_random_kills" file="tests/test_random_kills.py"
 name="test_a_random_rank_killed_at_a_random_moment" time="300">
 <properties><property name="seed" value="42"/>
 <property name="outcomes"
  value="{'others complete': 15, 'root lost': 3, 'relaunched: MPI_Init never completed': 1}"/>
 </properties></testcase></testsuite></testsuites>"""


def test_records_keep_what_each_test_measured_and_how_it_ended(tmp_path: Path) -> None:
    xml = tmp_path / "faults.xml"
    xml.write_text(JUNIT)
    records = faults.read_records("mpich", xml)
    assert [r.outcome for r in records] == ["passed", "xfailed", "passed"]
    assert records[0].properties == {"seconds_to_report": 9.61, "elapsed": 9.6,
                                     "fault_free": 3.7, "plan": "chain, 131072 B chunks",
                                     "mpiexec_status": 1}
    assert records[1].message.startswith("MPICH's OFI transport")


def test_the_tables_show_every_case_its_launcher_and_the_random_series(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(JUNIT)
    (tmp_path / "b.xml").write_text(KILLS)
    records = (faults.read_records("mpich", tmp_path / "a.xml")
               + faults.read_records("random kills", tmp_path / "b.xml"))
    text = faults.render(records, "python bench/faults.py", "2026-12-07")
    assert ("| a lost node costs only itself [kill a middle node, default options] | passed "
            "| chain, 131072 B chunks | 3.7 | 9.6 | 9.6 | 1 |") in text
    assert "| xfailed: MPICH's OFI transport" in text
    assert ("| MPICH hydra, plain | c rank killed under a launcher that ends the job | passed "
            "| 0.03 | 137 |") in text
    assert "seed 42, 18 runs, passed" in text and "| others complete | 15 |" in text
    assert faults.summary(records)["lost node reported after"] == {"median": 9.61, "max": 9.61}


def test_the_committed_table_is_the_committed_records_rendered() -> None:
    """docs/failures.md includes bench/results/faults.md: it must be what bench/faults.py
    made of bench/results/faults.json, not edited by hand."""
    results = ROOT / "bench" / "results"
    recorded = json.loads((results / "faults.json").read_text())
    records = [faults.Record(**r) for r in recorded["records"]]
    assert records, "no records"
    assert (results / "faults.md").read_text() == faults.render(
        records, recorded["command"], recorded["date"])
