"""The verdicts the benchmark scripts compute from their measurements (the timing itself is not tested)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_memory  # noqa: E402
import bench_train  # noqa: E402
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
