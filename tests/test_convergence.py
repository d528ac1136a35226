"""The convergence statuses (aelab.convergence) on synthetic curves and outputs."""
import numpy as np

from aelab.convergence import (caveat, cell_status, classifier_collapse, count_statuses, curve_status,
                               hash_collapse, qualify, vae_collapse)

STEPS = np.arange(1, 21) * 50.0  # 20 points over 1,000 steps


def test_a_curve_that_peaked_early_converged():
    acc = np.minimum(STEPS / 300, 1.0) - 0.0001 * np.maximum(STEPS - 300, 0)  # rises, then falls slowly
    assert curve_status(STEPS, acc, higher_is_better=True) == "converged"


def test_a_flat_noisy_tail_whose_best_is_late_converged():
    rng = np.random.default_rng(0)
    loss = 1 / (1 + STEPS / 20) + 0.01 * rng.standard_normal(len(STEPS))
    loss[-1] = loss.min() - 0.001  # the best point is the last, by noise
    assert curve_status(STEPS, loss, higher_is_better=False) == "converged"


def test_a_curve_still_rising_at_the_end_is_still_improving():
    acc = 0.1 + 0.8 * STEPS / STEPS[-1]  # a straight rise to the last step
    assert curve_status(STEPS, acc, higher_is_better=True) == "still improving"
    assert curve_status(STEPS, -acc, higher_is_better=False) == "still improving"  # a falling loss


def test_a_curve_with_a_nan_diverged():
    loss = 1 / STEPS
    loss[7] = np.nan
    assert curve_status(STEPS, loss, higher_is_better=False) == "diverged"
    assert curve_status(STEPS, np.full(20, np.inf), higher_is_better=False) == "diverged"


def test_too_few_points_ending_at_the_best_are_not_called_converged():
    assert curve_status([10, 20], [0.5, 0.6], higher_is_better=True) == "still improving"
    assert curve_status([10, 100], [0.6, 0.5], higher_is_better=True) == "converged"


def test_hash_codes_with_few_distinct_codes_or_a_dead_bit_collapsed():
    rng = np.random.default_rng(0)
    good = rng.random((1000, 16)) > 0.5
    assert hash_collapse(good) is None
    few = np.repeat(good[:5], 200, axis=0)  # 5 distinct codes for 1,000 images
    assert hash_collapse(few) == "5 distinct codes for 1000 images"
    dead = good.copy()
    dead[:, 3] = True
    assert hash_collapse(dead) == "1 of 16 bits never flip"


def test_a_classifier_that_predicts_one_class_collapsed():
    assert classifier_collapse(np.r_[np.zeros(91), np.arange(1, 10)]) == "class 0 predicted for 91% of images"
    assert classifier_collapse(np.arange(100) % 10) is None


def test_a_vae_with_no_kl_in_any_dimension_collapsed():
    assert vae_collapse(np.full(8, 1e-4)) is not None
    assert vae_collapse(np.r_[np.full(7, 1e-4), 0.5]) is None


def test_cell_status_prefers_a_detected_collapse():
    curve = np.stack([STEPS, np.minimum(STEPS / 300, 1.0)], 1)
    assert cell_status(curve, True) == "converged"
    assert cell_status(curve, True, "3 distinct codes") == "collapsed"


def test_counts_and_verdict_caveats_are_computed_from_the_rows():
    rows = [{"arm": "ladder", "status": "still improving"}] * 3 + [{"arm": "sup", "status": "converged"}] * 3
    counts = count_statuses(rows)
    assert counts == {"ladder": {"still improving": 3}, "sup": {"converged": 3}}
    assert caveat("ladder", counts) == "ladder: still improving at its last step in 3 of 3 cells"
    assert caveat("sup", counts) == ""
    assert qualify("ladder vs sup: better", ["ladder", "sup"], counts) == \
        "ladder vs sup: better [ladder: still improving at its last step in 3 of 3 cells]"
    assert qualify("sup: fine", ["sup"], counts) == "sup: fine"
