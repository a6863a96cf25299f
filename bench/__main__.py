"""``python -m bench``: every benchmark, printed as ratios to same-run baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import masking, sync_query
from bench.report import Report


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--customers", type=int, default=100_000, help="fixture size for the sync benchmark")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL source")
    ap.add_argument("--only", choices=["sync", "query", "masking"], help="run one group")
    ap.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    args = ap.parse_args()
    report = Report()
    if args.only in (None, "sync", "query"):
        sync_query.run(report, args.customers, with_postgres=not args.no_postgres, query_only=args.only == "query")
    if args.only in (None, "masking"):
        masking.run(report)
    report.print()
    report.save(args.out)


if __name__ == "__main__":
    main()
