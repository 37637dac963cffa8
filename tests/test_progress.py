import io

from mpistage.cli.progress import TerminalProgress


def test_silent_for_short_transfers() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out, delay=10.0)
    bar(50, 100)
    bar(100, 100)
    assert out.getvalue() == ""


def test_shows_bytes_rate_and_eta_then_ends_the_line() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out, delay=0.0, interval=0.0)
    bar(1 << 20, 4 << 20)
    assert "1.0 MiB / 4.0 MiB" in out.getvalue()
    assert "25.0 %" in out.getvalue() and "ETA" in out.getvalue() and "iB/s" in out.getvalue()
    bar(4 << 20, 4 << 20)
    assert out.getvalue().endswith("\n")
    assert "100.0 %" in out.getvalue()


def test_a_tree_shows_files_as_well() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out, delay=0.0, interval=0.0)
    bar.files(3, 10)
    bar(1 << 20, 4 << 20)
    assert "3 / 10 files" in out.getvalue()


def test_a_stream_shows_bytes_and_rate_then_its_size_at_the_end() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out, delay=0.0, interval=0.0)
    bar(3 << 20, 0)  # size unknown while the stream lasts
    assert "3.0 MiB so far (size unknown)" in out.getvalue() and "ETA" not in out.getvalue()
    bar(5 << 20, 5 << 20)  # the end: now the size is known
    assert out.getvalue().endswith("\n") and "5.0 MiB / 5.0 MiB" in out.getvalue()
