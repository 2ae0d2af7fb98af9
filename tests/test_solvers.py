from __future__ import annotations

import pytest
import torch

from pixelwizard.sampling.schedules import Schedule, flow_schedule, unipc_schedule
from pixelwizard.sampling.solvers import SOLVERS, UniPC, make_solver, solver_kind

SCHEDULES = [unipc_schedule(50, 5.0), unipc_schedule(4, 5.5), unipc_schedule(5, 5.8), flow_schedule(4, 5.5)]


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.steps}steps_t0={s.timesteps[0]}")
def test_straight_path_is_exact(name: str, schedule: Schedule):
    # v = eps - x0 is the exact velocity when all data is the single point x0: every solver stays on the line
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    solver = make_solver(name, schedule)
    s = schedule.sigmas
    x = (1 - s[0]) * x0 + s[0] * eps
    for k in range(schedule.steps):
        x = solver.step(eps - x0, x)
        torch.testing.assert_close(x, (1 - s[k + 1]) * x0 + s[k + 1] * eps, atol=1e-5, rtol=0)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_unipc_order_sequence():
    schedule = unipc_schedule(50, 5.0)
    solver = UniPC(schedule)
    torch.manual_seed(0)
    x, orders = torch.randn(8), []
    for k in range(50):
        x = solver.step(torch.tanh(x) + 0.01 * k, x)
        orders.append(solver.order)
    assert orders == [1] + [2] * 48 + [1]


def test_euler_step():
    schedule = unipc_schedule(4, 5.5)
    torch.manual_seed(0)
    x, v = torch.randn(3, 7), torch.randn(3, 7)
    out = make_solver("euler", schedule).step(v, x)
    s0, s1 = torch.tensor(schedule.sigmas[:2], dtype=torch.float32)
    assert torch.equal(out, x + (s1 - s0) * v)


@pytest.mark.parametrize("schedule", [unipc_schedule(4, 5.5), flow_schedule(4, 5.8)], ids=["unipc", "dpmpp"])
def test_first_step_is_euler(schedule: Schedule):
    torch.manual_seed(0)
    x, v = torch.randn(4, 6), torch.randn(4, 6)
    euler = make_solver("euler", schedule).step(v, x)
    unipc = make_solver("unipc", schedule).step(v, x)
    dpmpp = make_solver("dpm++", schedule).step(v, x)
    torch.testing.assert_close(unipc, dpmpp, atol=1e-5, rtol=0)
    torch.testing.assert_close(unipc, euler, atol=1e-5, rtol=0)


def _gaussian_error(name: str, steps: int) -> float:
    """Mean endpoint error on data x0 ~ N(mu, c^2), where the exact velocity field and ODE flow are closed-form:
    x_sigma ~ N((1-sigma) mu, var), var = (1-sigma)^2 c^2 + sigma^2, and z = (x - (1-sigma) mu)/sqrt(var) is
    constant along the flow."""
    mu, c = 0.3, 2.0
    schedule = unipc_schedule(steps, 1.0)

    def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
        var = (1 - s) ** 2 * c * c + s * s
        d = x - (1 - s) * mu
        return s / var * d - (mu + (1 - s) * c * c / var * d)  # E[eps | x] - E[x0 | x]

    torch.manual_seed(0)
    x = torch.randn(4096)
    s0 = schedule.sigmas[0]
    exact = mu + c * (x - (1 - s0) * mu) / ((1 - s0) ** 2 * c * c + s0 * s0) ** 0.5
    solver = make_solver(name, schedule)
    for k in range(steps):
        x = solver.step(velocity(x, schedule.sigmas[k]), x)
    return (x - exact).abs().mean().item()


@pytest.mark.parametrize("name, min_ratio, max_ratio", [("euler", 1.8, 2.2), ("dpm++", 2.8, 8.0), ("unipc", 3.5, 8.0)])
def test_convergence_order(name: str, min_ratio: float, max_ratio: float):
    # halving the step size divides the error by ~2 for Euler, by ~4 for second-order multistep methods
    coarse, fine = _gaussian_error(name, 20), _gaussian_error(name, 40)
    assert min_ratio < coarse / fine < max_ratio
    if name != "euler":
        assert coarse < 0.2 * _gaussian_error("euler", 20)


# Final samples of a fixed 6-value trajectory, recorded by running Wan2.2's own FlowUniPCMultistepScheduler /
# FlowDPMSolverMultistepScheduler (set up as in its pipeline) on the same velocity field.
REFERENCE = [
    ("unipc", unipc_schedule(4, 5.5), [-1.301816463470459, -0.8313324451446533, -0.43470099568367004,
                                       -0.02754969894886017, 0.46586695313453674, 1.0737947225570679]),
    ("unipc", unipc_schedule(5, 5.8), [-1.357635736465454, -0.9060211777687073, -0.5110131502151489,
                                       -0.09047667682170868, 0.42253896594047546, 1.048013687133789]),
    ("unipc", unipc_schedule(50, 5.0), [-3.0138494968414307, -2.2677886486053467, -1.504529356956482,
                                        -0.7256428599357605, 0.06616581231355667, 0.8667302131652832]),
    ("dpm++", flow_schedule(4, 5.5), [-1.2988442182540894, -0.827085018157959, -0.42989784479141235,
                                       -0.02295871078968048, 0.469603031873703, 1.0764116048812866]),
    ("dpm++", flow_schedule(50, 5.0), [-3.0145909786224365, -2.268120765686035, -1.504607081413269,
                                        -0.7256786227226257, 0.06605502218008041, 0.8665676116943359]),
]


@pytest.mark.parametrize("name, schedule, expected", REFERENCE, ids=[f"{n}-{s.steps}" for n, s, _ in REFERENCE])
def test_matches_wan22_reference(name: str, schedule: Schedule, expected: list[float]):
    solver = make_solver(name, schedule)
    x = torch.linspace(-1.5, 1.5, 6)
    for k in range(schedule.steps):
        x = solver.step(torch.tanh(0.7 * x + 0.1 * k) - 0.3 * x, x)
    torch.testing.assert_close(x, torch.tensor(expected), atol=1e-6, rtol=0)


def test_make_solver_rejects_unknown_name():
    with pytest.raises(ValueError, match="unipc, dpm\\+\\+, euler"):
        make_solver("heun", unipc_schedule(4, 5.5))


def test_each_solver_samples_its_own_schedule():
    """UniPC starts at the Wan2.2 sigma 0.999, DPM++ and the shortcut Euler rule at the training grid's sigma 1."""
    assert solver_kind("unipc").schedule(4, 5.5) == unipc_schedule(4, 5.5)
    for name in ("dpm++", "euler"):
        schedule = solver_kind(name).schedule(4, 5.5)
        assert schedule == flow_schedule(4, 5.5) and schedule.sigmas[0] == 1.0 and schedule.timesteps[0] == 1000
    with pytest.raises(ValueError, match="unknown solver 'heun'; valid: unipc, dpm\\+\\+, euler"):
        solver_kind("heun")
