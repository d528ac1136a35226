"""How good is `aelab study --plan`? Its estimated wall time beside the measured one, per study.

    python benchmarks/bench_plan.py --write-results      # two default Fashion-MNIST studies (hours of CPU)
    python benchmarks/bench_plan.py --smoke              # digits, quick presets: checks that it runs

For each study: `aelab study NAME ... --plan` (a fresh process: its timed probe), then the study itself
in a fresh process with the same arguments; the study's wall time is its session's in study.json
(the cells, the summary and the report; not the interpreter's start-up). The issue's target: the
estimate within a factor of 1.5 of the measured time. The plan times training and validation only, so
a study whose cells do much else (t-SNE, retrieval rankings) is expected to run over it.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, table, write_section  # noqa: E402

STUDIES = [["features", "data=fashion-mnist", "workers=2", "threads=1"],
           ["few-label", "data=fashion-mnist", "workers=2", "threads=1"]]
SMOKE = [["features", "data=digits", "quick=true", "seeds=2", "models=('dense','conv')", "workers=1"],
         ["few-label", "data=digits", "quick=true", "seeds=1", "labels_per_class=(10,)", "fractions=(1.0,)",
          "workers=1"]]


def aelab(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "aelab", "study", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"aelab study {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def one(args: list[str], out: Path) -> dict:
    """The plan's estimate and the measured wall time of one study, in seconds."""
    t0 = time.perf_counter()
    text = aelab([*args, f"out_dir={out}", "--plan"])
    plan_seconds = time.perf_counter() - t0
    estimate = float(re.search(r"estimated wall time: ([0-9.]+) min", text).group(1)) * 60
    name = f"{args[0]}-measured"
    aelab([*args, f"out_dir={out}", f"name={name}", "train.progress=off"])
    session = json.loads((out / name / "study.json").read_text())
    measured = sum(s["wall_seconds"] for s in session["sessions"])
    return {"study": " ".join(args), "estimate": estimate, "measured": measured, "ratio": measured / estimate,
            "plan_seconds": plan_seconds, "plan": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(args, Path(tmp)) for args in (SMOKE if a.smoke else STUDIES)]
    within = all(1 / 1.5 <= r["ratio"] <= 1.5 for r in rows)
    body = table(["study", "plan (min)", "measured (min)", "measured / plan", "plan took (s)"],
                 [[f"`{r['study']}`", r["estimate"] / 60, r["measured"] / 60, r["ratio"], r["plan_seconds"]]
                  for r in rows])
    md = (f"## Plan vs actual wall time\n\nMachine: {machine('cpu')}  \nCommand: `{command()}`; benchmark took "
          f"{(time.perf_counter() - t0) / 60:.1f} min\n\nTarget: every estimate within a factor of 1.5 of the "
          f"measured time: **{'met' if within else 'missed'}**.\n\n{body}\n\nThe plans:\n\n"
          + "\n\n".join(f"```\n{r['plan'].strip()}\n```" for r in rows))
    print(md)
    if a.write_results and not a.smoke:
        write_section("plan", md)


if __name__ == "__main__":
    main()
