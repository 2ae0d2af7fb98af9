from __future__ import annotations

import numpy as np
import pytest

from pixelwizard.sampling.schedules import Schedule, flow_schedule, shift_sigmas, shortcut_dt, unipc_schedule

# Wan2.2 LR stage: 50 UniPC steps at shift 5.0 (wan22.md 6.4)
LR_UNIPC_T = [999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927, 920, 913, 906, 898, 890,
              882, 873, 863, 854, 843, 833, 821, 809, 796, 783, 768, 753, 737, 720, 701, 681, 660, 636, 611, 584,
              555, 522, 487, 448, 405, 356, 302, 241, 172, 92]
LR_DPMPP_T = [1000, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927, 921, 913, 906, 898, 890,
              882, 873, 864, 854, 844, 833, 821, 809, 797, 783, 769, 753, 737, 720, 701, 681, 660, 637, 612, 585,
              555, 523, 487, 448, 405, 357, 303, 241, 172, 92]


def test_shift_sigmas():
    assert shift_sigmas(0.0, 5.0) == 0.0 and shift_sigmas(1.0, 5.0) == 1.0
    assert shift_sigmas(0.5, 1.0) == 0.5
    assert shift_sigmas(0.5, 5.0) == pytest.approx(5 / 6)
    x = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(shift_sigmas(x, 3.0), 3 * x / (1 + 2 * x))


def test_unipc_lr_schedule():
    s = unipc_schedule(50, 5.0)
    assert s.steps == 50 and len(s.sigmas) == 51
    assert list(s.timesteps) == LR_UNIPC_T
    assert s.sigmas[-1] == 0.0
    np.testing.assert_allclose(s.sigmas[:3], [0.9998, 0.995732, 0.99153], atol=1e-5)
    np.testing.assert_allclose(s.sigmas[-4:], [0.241740, 0.172265, 0.092507, 0.0], atol=1e-6)
    # sigmas are exactly float32 values, strictly decreasing
    assert all(float(np.float32(v)) == v for v in s.sigmas)
    assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))


def test_dpmpp_lr_schedule():
    s = flow_schedule(50, 5.0)
    assert list(s.timesteps) == LR_DPMPP_T
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0 and len(s.sigmas) == 51


@pytest.mark.parametrize(
    "steps, shift, sigmas, t, dt",
    [
        (4, 5.5, [0.99982, 0.94264, 0.84589, 0.64675], [999, 942, 845, 646], [56, 96, 198, 646]),
        (4, 5.8, [0.99983, 0.94545, 0.85269, 0.65879], [999, 945, 852, 658], [54, 92, 194, 658]),
        (5, 5.8, [0.99983, 0.95848, 0.89668, 0.79425, 0.59153], [999, 958, 896, 794, 591], [40, 62, 102, 202, 590]),
    ],
)
def test_hr_unipc_tables(steps, shift, sigmas, t, dt):
    s = unipc_schedule(steps, shift)
    np.testing.assert_allclose(s.sigmas[:-1], sigmas, atol=1e-5)
    assert list(s.timesteps) == t
    assert shortcut_dt(s.timesteps) == dt


def test_hr_dpmpp_table():
    s = flow_schedule(4, 5.5)
    assert list(s.timesteps) == [1000, 942, 846, 647]
    assert shortcut_dt(s.timesteps) == [58, 96, 198, 646]


def test_shortcut_dt_even_and_floor():
    assert shortcut_dt([5, 4]) == [2, 4]  # gap 1 -> 0 after evening -> floor 2
    assert shortcut_dt([9]) == [8]
    assert shortcut_dt([1]) == [2]


def test_schedule_validation():
    with pytest.raises(ValueError):
        Schedule(sigmas=(1.0, 0.5), timesteps=(1000,))
    with pytest.raises(ValueError):
        Schedule(sigmas=(1.0, 0.0), timesteps=(1000, 500))
