"""aelab.stats: Student-t intervals over seeds, paired differences and the verdicts read off them."""
import math

import pytest

from aelab.stats import paired, summary, verdict


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0, 5.0], [0.71, 0.74], [0.5, 0.52, 0.49]])
def test_the_interval_is_student_t_over_the_seeds(values):
    from scipy import stats as st  # here: collection in every test worker never imports scipy.stats

    s = summary(values)
    n, mean, std = len(values), sum(values) / len(values), st.tstd(values)
    half = st.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    assert s["n"] == n and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(std)
    assert s["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-12)
    assert math.isnan(summary([0.7])["ci95"][0])  # one seed: no interval


def test_verdicts_come_from_the_paired_interval():
    assert verdict(paired([0.80, 0.82, 0.81], [0.70, 0.71, 0.72])) == "better"
    assert verdict(paired([0.70, 0.71, 0.72], [0.80, 0.82, 0.81])) == "worse"
    assert verdict(paired([0.80, 0.70, 0.75], [0.75, 0.74, 0.76])) == "no measurable difference"
    assert verdict(paired([0.1, 0.2], [0.3, 0.5]), higher_is_better=False) == "no measurable difference"
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.1, 0.2], [0.1])
