"""Flow-matching schedules, solvers, seeds and the LR/HR samplers."""
