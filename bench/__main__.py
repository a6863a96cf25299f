"""``python -m bench``: every benchmark, printed as ratios to same-run baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import audit, masking, provision, serve, synth, sync_query
from bench.report import Report


def _sizes(text: str) -> list[int]:
    """``2000,10000`` → [2000, 10000]."""
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--customers", type=_sizes, default=None,
                    help="fixture size for the sync benchmark (default 100000); peers: sizes, e.g. 2000,10000")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL source")
    ap.add_argument("--only", choices=["sync", "query", "masking", "synth", "audit", "serve", "scale", "provision",
                                       "peers"],
                    help="run one group (scale and peers run only when named: they need the scale / bench extra)")
    ap.add_argument("--scale-customers", type=int, default=10_000, help="fixture size for the scale benchmark")
    ap.add_argument("--synth-customers", type=int, default=10_000, help="fixture size for the synthesis benchmark")
    ap.add_argument("--provision-customers", type=int, default=20_000, help="fixture size for the provisioning benchmark")
    ap.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="peers: seconds per system and case")
    ap.add_argument("--systems", type=lambda v: v.split(","), help="peers: e.g. hma,copula (default: all)")
    ap.add_argument("--cases", type=lambda v: v.split(","), help="peers: two-level,sequential,tree (default: all)")
    ap.add_argument("--neural-epochs", type=int, default=15, help="peers: epochs of microdb neural")
    ap.add_argument("--mostly-minutes", type=float, default=3.0, help="peers: mostlyai-engine minutes per model")
    args = ap.parse_args()
    if args.only == "peers":
        from bench import peers

        out = args.out if args.out != Path("bench/results/latest.json") else Path("bench/results/peers-latest.json")
        peers.run(args.customers or [2000], timeout_s=args.timeout, only_systems=args.systems,
                  only_cases=args.cases, neural_epochs=args.neural_epochs, mostly_minutes=args.mostly_minutes, out=out)
        return
    args.customers = args.customers[0] if args.customers else 100_000
    report = Report()
    if args.only in (None, "sync", "query"):
        sync_query.run(report, args.customers, with_postgres=not args.no_postgres, query_only=args.only == "query")
    if args.only in (None, "masking"):
        masking.run(report)
    if args.only in (None, "serve") and not args.no_postgres:  # the baseline is PostgreSQL itself
        serve.run(report, customers=min(args.customers, 10_000))
    if args.only in (None, "audit"):
        audit.run(report)
    if args.only in (None, "synth"):
        synth.run(report, args.synth_customers)
    if args.only in (None, "provision") and not args.no_postgres:  # the baseline is a COPY into PostgreSQL
        provision.run(report, args.provision_customers)
    if args.only == "scale":
        from bench import scale

        scale.run(report, args.scale_customers)
    report.print()
    report.save(args.out)


if __name__ == "__main__":
    main()
