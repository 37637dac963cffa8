"""``python -m mpistage.model``: what the cost model and the simulator predict, per algorithm.

    python -m mpistage.model --nodes 1024 --size 10G --bandwidth 10gbit --latency 5us

One line per algorithm of :data:`mpistage.engine.algorithms.SCHEDULES` (at the chunk
:func:`mpistage.model.choice.optimal_chunk` picks, or ``--chunk``) and per reference
(:data:`mpistage.model.references.REFERENCES`, whole-file MPI broadcasts), best first: the
chunk, the closed form's seconds, the simulator's, and both as a multiple of the bound
``S/B`` (one link's time for the file).  No MPI is started.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from ..engine.algorithms import SCHEDULES
from ..errors import UsageError
from ..model import Parameters, predict
from ..units import format_bytes, format_seconds, parse_size
from .choice import optimal_chunk
from .references import REFERENCES, reference_chunk, reference_closed_form
from .simulate import simulate

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps|b/s)?\s*$", re.IGNORECASE)
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e-?\d+)?)\s*(ns|us|µs|ms|s)?\s*$", re.IGNORECASE)
_SI = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


def parse_rate(text: str) -> float:
    """A rate in bytes/s: ``10gbit`` and ``100mbit`` (bits, SI), ``1.25GB/s`` (bytes,
    SI), ``inf``; a bare number is bytes/s.

    Raises:
        UsageError: anything else.
    """
    if text.strip().lower() in ("inf", "none"):
        return math.inf
    match = _RATE_RE.match(text)
    if not match:
        raise UsageError(f"invalid rate {text!r}: expected e.g. 10gbit, 100mbit, 1.25GB/s or inf")
    number, prefix, unit = match.groups()
    value = float(number) * _SI[prefix.lower()]
    bits = unit is not None and unit.lower() in ("bit", "bps") or (unit == "b/s")
    return value / 8 if bits else value


def parse_seconds(text: str) -> float:
    """A duration: ``5us``, ``2ms``, ``0.5s``, ``100ns`` (bare: seconds).

    Raises:
        UsageError: anything else.
    """
    match = _TIME_RE.match(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: expected e.g. 5us, 2ms or 0.5s")
    number, unit = match.groups()
    return float(number) * _SECONDS[unit.lower() if unit else None]


def rows(size: int, nodes: int, params: Parameters, *, chunk: int | None = None,
         arity: int = 2, simulated: bool = True) -> list[dict[str, object]]:
    """Per algorithm and reference: ``name``, ``chunk``, ``closed`` and ``simulated``
    seconds (``None`` when not simulated), best first (by the simulator's time when
    there is one)."""
    table: list[dict[str, object]] = []
    for name in SCHEDULES:
        best = chunk or optimal_chunk(name, size, nodes, params, arity)
        table.append({"name": name, "chunk": best,
                      "closed": predict(name, size, nodes, best, params, arity),
                      "simulated": simulate(name, size, nodes, best, params, arity)
                      if simulated else None})
    for name in REFERENCES:
        table.append({"name": name, "chunk": reference_chunk(name, size, nodes, params),
                      "closed": reference_closed_form(name, size, nodes, params),
                      "simulated": simulate(name, size, nodes, 1, params) if simulated else None})
    table.sort(key=lambda r: r["simulated"] if r["simulated"] is not None else r["closed"])  # type: ignore[arg-type,return-value]
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpistage.model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--size", required=True, help="file size, e.g. 10G (powers of 1024)")
    parser.add_argument("--bandwidth", required=True, help="per link and direction, e.g. 10gbit")
    parser.add_argument("--latency", required=True, help="per message, e.g. 5us")
    parser.add_argument("--read", default="inf", help="the root's read rate (default: inf)")
    parser.add_argument("--write", default="inf", help="each node's write rate (default: inf)")
    parser.add_argument("--chunk", help="fix the chunk size (default: the model's best per algorithm)")
    parser.add_argument("--arity", type=int, default=2, help="the k-ary tree's arity")
    parser.add_argument("--no-simulate", action="store_true", help="the closed form only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        size = parse_size(args.size)
        chunk = parse_size(args.chunk) if args.chunk else None
        params = Parameters(latency=parse_seconds(args.latency),
                            bandwidth=parse_rate(args.bandwidth),
                            read_bandwidth=parse_rate(args.read),
                            write_bandwidth=parse_rate(args.write))
        if args.nodes < 1 or args.arity < 2 or (chunk is not None and chunk < 1):
            raise UsageError(f"expected --nodes ≥ 1, --arity ≥ 2 and --chunk ≥ 1, got "
                             f"{args.nodes}, {args.arity} and {chunk}")
    except UsageError as exc:
        print(f"mpistage.model: {exc}", file=sys.stderr)
        return 2
    bound = size / params.bandwidth
    table = rows(size, args.nodes, params, chunk=chunk, arity=args.arity,
                 simulated=not args.no_simulate)
    rate = lambda r: "inf" if math.isinf(r) else f"{r * 8 / 1e9:g} Gbit/s"  # noqa: E731
    print(f"{args.nodes} nodes, {format_bytes(size)}, B = {rate(params.bandwidth)}, "
          f"α = {format_seconds(params.latency)}, R = {rate(params.read_bandwidth)}, "
          f"W = {rate(params.write_bandwidth)}: bound S/B = {format_seconds(bound)}")
    print(f"{'algorithm':<26}{'chunk':>12}{'closed form':>14}{'× S/B':>10}"
          f"{'simulated':>14}{'× S/B':>10}")
    for row in table:
        closed, sim = float(row["closed"]), row["simulated"]  # type: ignore[arg-type]
        sim_text = ("-", "-") if sim is None else (format_seconds(float(sim)),  # type: ignore[arg-type]
                                                   f"{float(sim) / bound:.4f}")  # type: ignore[arg-type]
        print(f"{row['name']!s:<26}{format_bytes(int(row['chunk'])):>12}"  # type: ignore[call-overload]
              f"{format_seconds(closed):>14}{closed / bound if bound else math.nan:>10.4f}"
              f"{sim_text[0]:>14}{sim_text[1]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
