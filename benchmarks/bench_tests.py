"""The test suite's wall time and the whole machine's CPU time while it runs (README: `make test`).

    python benchmarks/bench_tests.py                  # prints the row
    python benchmarks/bench_tests.py --write-results  # and writes it into RESULTS.md (tests-time)

CPU time is the machine's busy time from /proc/stat (Linux) around `python -m pytest`: it also counts
processes the tests start but never wait for (Ray's daemons, Chromium), which the test process's own
rusage misses. Run it on a quiet machine: anything else running is counted too.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, table, write_section  # noqa: E402


def busy_seconds() -> float:
    """Seconds the machine's CPUs spent busy since boot (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return ticks / 100.0  # USER_HZ is 100 on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (default: the configured run)")
    a = ap.parse_args()
    root = Path(__file__).parent.parent
    cpu0, t0 = busy_seconds(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *a.pytest_args], cwd=root,
                          capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, busy_seconds() - cpu0
    last = next((line.strip("= ") for line in reversed(done.stdout.splitlines()) if " in " in line), "")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    rows = [[commit.strip(), f"{wall:.0f}", f"{cpu:.0f}", f"{cpu / wall:.2f}", last]]
    body = table(["commit", "wall seconds", "machine CPU seconds", "cores busy", "pytest's last line"], rows)
    print(body)
    if done.returncode:
        raise SystemExit(f"the suite failed (exit {done.returncode}): nothing written")
    if a.write_results:
        write_section("tests-time", f"## Test suite time\n\nMachine: {machine('cpu')}  \nCommand: `{command()}`, "
                                    f"{time.strftime('%Y-%m-%d')}\n\n{body}")


if __name__ == "__main__":
    main()
