"""The verdicts the benchmark scripts compute from their measurements (the timing itself is not tested)."""
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_memory  # noqa: E402
import bench_roofline  # noqa: E402
import bench_seeds  # noqa: E402
import bench_train  # noqa: E402
import bench_workers  # noqa: E402
import systems  # noqa: E402


def rows(peak1: float, peak20: float, n1: int = 60000) -> list:
    """bench_memory's table rows: label, images, chunk, MB, RSS after imports, peak, seconds, MSE."""
    row = lambda n, peak: ["x", n, 65536, 0.0, 300.0, peak, 1.0, 0.05]  # noqa: E731
    return [row(n1, 480.0), row(n1, peak1), row(n1, peak1), row(20 * n1, peak20)]


def test_memory_growth_is_judged_per_extra_image():
    flat = bench_memory.growth_note(rows(480.0, 512.0), 65536, 784, smoke=False)
    assert "bounded." in flat and "NOT" not in flat
    held = 480.0 + 1_140_000 * 784 / 2**20  # every extra image's pixels kept
    assert "NOT bounded" in bench_memory.growth_note(rows(480.0, held), 65536, 784, smoke=False)
    assert "smoke" in bench_memory.growth_note(rows(480.0, held, n1=2000), 65536, 784, smoke=True)


def test_floor_note_says_what_3x_pythae_needs():
    speed = {"aelab": [95.0, 95.0], "pythae": [50.0, 50.0], systems.BARE: [100.0, 100.0]}
    note = bench_train.floor_note(speed)
    assert "0.95x the bare loop" in note and "150 samples/s" in note and "1.50x" in note
    assert bench_train.floor_note({"aelab": [1.0], "pythae": [1.0]}) == ""


def test_target_note_needs_the_ratio_and_the_same_quality():
    speed = {"aelab": [200.0], "aelab compile": [90.0], "pythae": [100.0]}
    quality = {"aelab": [0.0300], "aelab compile": [0.0200], "pythae": [0.0200]}
    note = bench_train.target_note(2, speed, quality, "cpu")  # model 2 on a CPU: >= 2x
    assert "aelab 2.00x (missed, test MSE 0.03 vs pythae's 0.02: not the same quality)" in note
    assert "aelab compile 0.90x (missed)" in note
    assert "aelab 2.00x (met)" in bench_train.target_note(2, speed, {k: [0.02] for k in quality}, "cpu")
    assert bench_train.target_note(3, speed, quality, "cuda") == ""  # no GPU target for model 3


def test_race_verdict_is_a_lower_bound_when_pythae_stops_at_the_cap():
    both = {"aelab (default conv VAE)": (2.0, 0.020), "pythae VAE (benchmark nets)": (100.0, 0.024)}
    assert "50x faster than pythae; target >= 30x: met" in bench_train.race_verdict(both, 0.025, 30.0)
    capped = {"aelab (default conv VAE)": (5.0, 0.020), "pythae VAE (benchmark nets)": (100.0, 0.030)}
    text = bench_train.race_verdict(capped, 0.025, 30.0)
    assert "at least 20x faster" in text and "not shown (20x is a lower bound)" in text
    assert "no ratio" in bench_train.race_verdict({**capped, "aelab (default conv VAE)": (5.0, 0.03)}, 0.025, 30.0)


def test_gpu_verdicts():
    assert "0.469 s (target < 0.5 s: met)" in bench_train.epoch_note([128000.0])
    assert "missed by 2.00x" in bench_train.epoch_note([60000.0])
    times = {bench_seeds.ONE: [8.0], bench_seeds.STACK: [4.0]}
    assert bench_seeds.verdict(times, "cuda") == "Batched: 2.00x one after another; target >= 4x: missed by 2.00x."


def test_workers_note_says_whether_the_target_is_within_reach():
    # 2 threads already 1.6x one thread: perfect 2 workers (183 s) are only 1.25x the 1 x 2 arm
    busy = bench_workers.scaling(one=229.2, two=206.5, single=366.4)
    assert "1.25x the 1 x 2 arm" in busy and "beyond reach" in busy and "89% of perfect" in busy
    # threads that barely help leave room: perfect workers would be 1.64x
    idle = bench_workers.scaling(one=300.0, two=190.0, single=366.0)
    assert "1.64x" in idle and "within reach" in idle


def test_workers_note_flags_runs_that_differ():
    note = bench_workers.repeatable({(1, 2): [{"sha": "a"}, {"sha": "b"}], (2, 1): [{"sha": "c"}, {"sha": "c"}]})
    assert "1 x 2: **False**" in note and "2 x 1: **True**" in note


def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    """`gpu_check.sh --smoke`: the GPU check's steps at toy sizes on the CPU (the gpu tests are collected
    and skipped without CUDA); its figures mean nothing and RESULTS.md is not written."""
    results = Path(bench_train.__file__).with_name("RESULTS.md")
    before = results.read_text()
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "AELAB_CACHE": str(tmp_path)}
    done = subprocess.run(["bash", str(results.with_name("gpu_check.sh")), "--smoke"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.split("== summary")[-1]
    for name in ("gpu-tests", "bench-train", "bench-seeds", "bench-workers"):
        assert f"| {name} | ok |" in summary
    assert results.read_text() == before


def test_pythae_cap_grows_to_show_the_target_ratio_within_a_bound():
    aelab = {"aelab (default conv VAE)": (8.0, 0.02)}
    assert bench_train.pythae_cap(aelab, 0.025, 100.0, 260.0, 30.0) == 8.0 * 30 * 1.02
    assert bench_train.pythae_cap(aelab, 0.025, 100.0, 200.0, 30.0) == 200.0  # bounded
    assert bench_train.pythae_cap({"a": (2.0, 0.02)}, 0.025, 100.0, 260.0, 30.0) == 100.0  # never below --cap
    assert bench_train.pythae_cap({"a": (8.0, 0.03)}, 0.025, 100.0, 260.0, 30.0) == 100.0  # aelab missed: no ratio


def test_roofline_smoke_measures_every_arm_and_writes_nothing(capsys):
    results = Path(bench_roofline.__file__).with_name("RESULTS.md")
    before = results.read_text()
    bench_roofline.main(["--smoke", "--threads", "1", "--write-results"])
    out = capsys.readouterr().out
    for arm in bench_roofline.arms(smoke=True):
        row = next(line for line in out.splitlines() if line.startswith(f"| {arm} |"))
        gflop, ms = (float(v) for v in row.split("|")[2:4])
        assert gflop > 0 and ms > 0, row
    assert "fp32 GEMM peak" in out and results.read_text() == before  # smoke figures are never written


def test_roofline_profile_splits_a_step_into_products_and_the_rest(capsys):
    """--profile: the share of a step in matrix products, and the kernels it runs besides; no timing table."""
    cfg, _ = bench_roofline.arms(smoke=True)["ladder-full"]
    r = bench_roofline.profile(cfg, 16, 3, smoke=True)
    assert 0 < r["matmul_ms"] < r["ms_per_step"] and 0 < r["matmul_share"] < 1 and r["matmul_gflops"] > 0
    assert r["other_aten_calls_per_step"] > 100  # the ladder's noise, statistics and combinators: many small kernels
    bench_roofline.main(["--smoke", "--threads", "1", "--profile", "2", "--arms", "ladder-full"])
    out = capsys.readouterr().out
    assert out.startswith("ladder-full: ") and "sgemm peak at 1 threads" in out and "GEMM peak" not in out


def test_roofline_verdict_judges_ladder_full_at_two_threads():
    rows = [["supervised MLP", 1.0, 10.0, 100.0, 0.9], ["ladder-full", 3.2, 30.0, 106.7, 0.63]]
    assert bench_roofline.verdict(rows, 2) == "ladder-full at 63% of the GEMM peak; target >= 60% on 2 threads: met."
    rows[1][4] = 0.41
    assert bench_roofline.verdict(rows, 2).endswith("missed.")
    assert "not judged here" in bench_roofline.verdict(rows, 1)


def test_machine_busy_seconds_count_the_cpu_a_process_burns():
    import bench_tests

    before, t0 = bench_tests.busy_seconds(), time.process_time()
    while time.process_time() - t0 < 0.3:  # 0.3 s of this process's CPU
        pass
    assert bench_tests.busy_seconds() - before >= 0.25  # the machine's counter saw it (ticks of 10 ms)
