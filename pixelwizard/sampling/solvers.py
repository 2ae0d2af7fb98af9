"""Flow-matching ODE solvers. Each is a small stateful object: `step(v, x)` consumes the velocity predicted at the
current schedule point and returns the sample at the next one.

All three work on the path x = alpha*x0 + sigma*eps with alpha = 1 - sigma and a velocity v = eps - x0. The two
multistep solvers integrate the data prediction m = x0_hat = x - sigma*v in the half log-SNR
lambda = log(alpha) - log(sigma), where the exact solution from s to t is
    x_t = (sigma_t/sigma_s) x_s + alpha_t * integral_{lambda_s}^{lambda_t} e^{-(lambda_t - l)} m(l) dl,
and the integral is approximated from the last one or two m's. Arithmetic is float32 with 0-d float32 sigmas, in
the same operation order as Wan2.2's schedulers, so trajectories match them to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pixelwizard.sampling.schedules import Schedule, flow_schedule, unipc_schedule


def _lam(sigma: Tensor) -> Tensor:
    """lambda = log(alpha) - log(sigma); +inf at sigma = 0, -inf at sigma = 1."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _order(step: int, steps: int) -> int:
    # second order needs one earlier m (warm-up at step 0); the final step to sigma = 0 is first order
    return min(2, step + 1, steps - step)


class Euler:
    """The shortcut rule the PixelWizard HR model was trained with: x <- x + (sigma_next - sigma) * v."""

    def __init__(self, schedule: Schedule):
        self.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32)
        self.i = 0

    def step(self, v: Tensor, x: Tensor) -> Tensor:
        s, s_next = self.sigmas[self.i], self.sigmas[self.i + 1]
        self.i += 1
        return x.float() + (s_next - s) * v.float()


class DPMSolverPP:
    """Multistep DPM-Solver++(2M), midpoint variant (Lu et al. 2022); first order on the first and last step."""

    def __init__(self, schedule: Schedule):
        self.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32)
        self.i = 0
        self.m_prev: Tensor | None = None

    def step(self, v: Tensor, x: Tensor) -> Tensor:
        i, sig = self.i, self.sigmas
        x = x.float()
        m = x - sig[i] * v.float()
        s, t = sig[i], sig[i + 1]
        h = _lam(t) - _lam(s)
        # m held constant over the step: x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) m
        a = (1 - t) * (torch.exp(-h) - 1.0)
        x_next = (t / s) * x - a * m
        if _order(i, len(sig) - 1) == 2:
            # m linear in lambda, slope from the previous m, evaluated at the step's midpoint
            r = (_lam(s) - _lam(sig[i - 1])) / h
            x_next = x_next - 0.5 * a * ((1.0 / r) * (m - self.m_prev))
        self.m_prev = m
        self.i += 1
        return x_next


class UniPC:
    """UniPC-2 with B(h) = expm1(-h) ("bh2") in data-prediction form (Zhao et al. 2023).

    Each step first corrects the previous step (UniC: redo it with the fresh m as an extra node), then predicts the
    next sample (UniP). Orders go 1, 2, ..., 2, 1; the final step to sigma = 0 returns the last x0 prediction.
    """

    def __init__(self, schedule: Schedule):
        self.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32)
        self.i = 0
        self.ms: list[Tensor] = []  # last two data predictions, oldest first
        self.x_prev: Tensor | None = None  # sample the previous predictor started from
        self.order = 0  # order of the previous predictor

    def step(self, v: Tensor, x: Tensor) -> Tensor:
        i = self.i
        x = x.float()
        m = x - self.sigmas[i] * v.float()
        if i > 0:
            x = self._bh2(self.x_prev, i - 1, self.ms[-self.order :], m_new=m)
        self.ms = [*self.ms, m][-2:]
        self.order = _order(i, len(self.sigmas) - 1)
        self.x_prev = x
        self.i += 1
        return self._bh2(x, i, self.ms[-self.order :])

    def _bh2(self, x: Tensor, j: int, ms: list[Tensor], m_new: Tensor | None = None) -> Tensor:
        """One step sigma_j -> sigma_{j+1} from x at sigma_j; ms = [m_{j-1},] m_j.

        Predictor (m_new None) or corrector (m_new = m_{j+1}, the prediction at the step's end). With
        hh = -h, h = lambda_{j+1} - lambda_j:
            x' = (sigma_{j+1}/sigma_j) x - alpha_{j+1} expm1(hh) m_j - alpha_{j+1} B(h) sum_k rho_k D_k,
        D_k the divided differences of m, B(h) = expm1(hh).
        """
        s, t = self.sigmas[j], self.sigmas[j + 1]
        lam_s = _lam(s)
        h = _lam(t) - lam_s
        hh = -h
        phi1 = torch.expm1(hh)  # h*phi_1 of the exponential integrator
        b_h = phi1  # bh2: B(h) = expm1(hh) as well
        m = ms[-1]
        x_next = t / s * x - (1 - t) * phi1 * m
        if len(ms) == 2:  # node at lambda_{j-1}: r = (lambda_{j-1} - lambda_j)/h, D = (m_{j-1} - m_j)/r
            r = (_lam(self.sigmas[j - 1]) - lam_s) / h
            d = (ms[0] - m) / r
        if m_new is None:
            if len(ms) == 1:
                return x_next
            return x_next - (1 - t) * b_h * (0.5 * d)  # UniP-2 uses rho = 1/2
        d_new = m_new - m  # node at the step's end, r = 1
        if len(ms) == 1:
            return x_next - (1 - t) * b_h * (0.5 * d_new)
        # rho solves [[1, 1], [r, 1]] rho = [g1, 2 g2] / B(h), g1 = phi1/hh - 1 and g2 = g1/hh - 1/2
        # (hh*phi_2(hh) and hh*phi_3(hh)): the order conditions of UniC-2.
        g1 = phi1 / hh - 1
        g2 = g1 / hh - 0.5
        R = torch.tensor([[1.0, 1.0], [r.item(), 1.0]], dtype=torch.float32)
        rho = torch.linalg.solve(R, torch.stack([g1 / b_h, 2 * g2 / b_h]))
        return x_next - (1 - t) * b_h * (rho[0] * d + rho[1] * d_new)


@dataclass(frozen=True)
class SolverKind:
    """A solver and the schedule it samples: UniPC the Wan2.2 path (sigma from 0.999), DPM++ and the shortcut Euler
    rule the flow-matching training grid (sigma from 1)."""

    make: Callable[[Schedule], UniPC | DPMSolverPP | Euler]
    schedule: Callable[[int, float], Schedule]


SOLVERS: dict[str, SolverKind] = {
    "unipc": SolverKind(UniPC, unipc_schedule),
    "dpm++": SolverKind(DPMSolverPP, flow_schedule),
    "euler": SolverKind(Euler, flow_schedule),
}


def solver_kind(name: str) -> SolverKind:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[name]


def make_solver(name: str, schedule: Schedule) -> UniPC | DPMSolverPP | Euler:
    return solver_kind(name).make(schedule)
