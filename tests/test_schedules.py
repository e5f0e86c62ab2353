import pytest

from gcflow.schedules import MuSchedule, linear_value, mu_from_released_flag


def test_constant_and_start():
    s = MuSchedule(0.3)
    assert [s.at(k, 1000) for k in (0, 500, 999)] == [0.3, 0.3, 0.3]
    s = MuSchedule(0.5, start=100)
    assert [s.at(k, 1000) for k in (0, 99, 100, 999)] == [0.0, 0.0, 0.5, 0.5]
    assert not MuSchedule(0.0).ever_gc and MuSchedule(0.0, 0.2).ever_gc


def test_linear_golden_values():
    # The released code's get_mix_value(k, K, a, b) = (b − a)·k/K + a, with k the 0-based step.
    s = MuSchedule(0.2, 0.6)
    assert s.at(0, 1000) == pytest.approx(0.2, abs=1e-15)
    assert s.at(250, 1000) == pytest.approx(0.3, abs=1e-15)
    assert s.at(500, 1000) == pytest.approx(0.4, abs=1e-15)
    assert s.at(999, 1000) == pytest.approx(0.5996, abs=1e-15)
    assert MuSchedule(0.8, 0.0).at(750, 1000) == pytest.approx(0.2, abs=1e-15)
    # A start masks the beginning only; the ramp still runs over the whole run.
    assert MuSchedule(0.2, 0.6, start=300).at(299, 1000) == 0.0
    assert MuSchedule(0.2, 0.6, start=300).at(300, 1000) == pytest.approx(0.32, abs=1e-15)
    assert linear_value(3, 4, 1.0, 0.0) == 0.25


def test_released_flag_is_the_ic_probability():
    # Released mask: rand > flag takes the EMA prediction, so P(GC) = 1 − flag; flag 0 = all GC.
    assert mu_from_released_flag(0.5) == 0.5
    assert mu_from_released_flag(0.0) == 1.0
    assert mu_from_released_flag(0.7) == pytest.approx(0.3, abs=1e-15)
    assert mu_from_released_flag(-0.2) == 1.0 and mu_from_released_flag(1.3) == 0.0
    s = MuSchedule.from_released(0.9, 0.5, start_generator_induced_traj=10)
    assert s.at(5, 100) == 0.0
    assert s.at(50, 100) == pytest.approx(1 - linear_value(50, 100, 0.9, 0.5), abs=1e-15)
    assert MuSchedule.from_released(0.5) == MuSchedule(0.5)


def test_validation():
    with pytest.raises(ValueError, match="mu"):
        MuSchedule(1.5)
    with pytest.raises(ValueError, match="start"):
        MuSchedule(0.5, start=-1)
    with pytest.raises(ValueError, match="total_steps"):
        MuSchedule(0.1, 0.2).at(0, 0)
