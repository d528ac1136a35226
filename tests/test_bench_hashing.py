"""bench_hashing's computed target verdict (the timing itself is not tested)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_target_is_judged_per_exact_system_on_the_first_size():
    import bench_hashing  # here: collection in every test worker never imports SciPy

    rows = [["faiss flat", 60000, 10000, 0.45, 22000.0, 1.0], ["faiss mih", 60000, 10000, 0.3, 33000.0, 0.99],
            ["ours", 60000, 10000, 2.1, 4800.0, 1.0], ["numpy", 60000, 1000, 1.4, 700.0, 1.0],
            ["faiss flat", 1200000, 10000, 0.5, 20000.0, 1.0]]
    note = bench_hashing.target_note(rows)
    assert "faiss flat 0.45 s (met)" in note and "ours 2.10 s (missed)" in note and "numpy" not in note
    assert note.endswith("Met by faiss flat.")  # mih is under 1 s but not exact: it does not count
    rows[0][3] = 1.5
    assert bench_hashing.target_note(rows).endswith("MISSED by every exact system.")
