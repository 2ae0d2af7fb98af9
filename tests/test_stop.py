"""Stop means stop: a stop signal to the `pixelwizard` process alone, `pixelwizard stop OUT` from another terminal, a
kill of a job's launcher or of Snakemake, each ends every stage job of the run after its current step, and nothing
of the run is left running once it returns; a job killed by SIGKILL (the OOM killer) is named and counted as failed;
a job left working by a run that was killed is named by the refusal of the next run, shown by `status` and ended by
`pixelwizard stop`. Real processes and real signals; the process trees are checked right after each run ends.

The HR stage reruns on a copy of a finished run at a larger size (only HR and decode read the size), so each of its
denoising steps takes a while: a stop that returned before the step in flight ended would leave the job running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from conftest import copy_run, events, generate, pixelwizard, pixelwizard_processes, popen_generate, wait_for_job

pytestmark = pytest.mark.slow

SLOW_HR = ("--hr-steps", "50", "--until", "hr", "--shard-size", "2", "--shard-size", "hr=4")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return copy_run(finished_run, tmp_path / "out")


def start_slow_hr(weights, slow_hr, finished_run, out, *extra: str) -> subprocess.Popen:
    return popen_generate(weights, finished_run.parent / "prompts.jsonl", out, *slow_hr, *SLOW_HR, *extra,
                          start_new_session=True)


def table_cell(shown: str, row: str, column: str) -> str:
    """A cell of the table `status` and the run's summary print."""
    lines = shown.splitlines()
    header = [c.strip() for c in next(line for line in lines if "┃ stage" in line).strip("┃ ").split("┃")]
    found = next(line for line in lines if line.startswith(f"│ {row} "))
    cells = [c.strip() for c in found.strip("│ ").split("│")]
    return cells[header.index(column)]


def assert_nothing_left(out) -> None:
    assert pixelwizard_processes(out) == []
    assert not list((out / ".pixelwizard" / "jobs").glob("*.json"))


def last_event(out, stage: str, item: str) -> dict:
    return [e for e in events(out) if e["stage"] == stage and e["id"] == item][-1]


@pytest.mark.parametrize("signum, hr_gpus", [(signal.SIGTERM, 2), (signal.SIGHUP, 1)],
                         ids=["sigterm-torchrun", "sighup"])
def test_a_stop_signal_to_the_cli_alone_returns_once_the_step_in_flight_ended(weights, slow_hr, finished_run, run_copy,
                                                                            signum, hr_gpus):
    """With --hr-gpus 2 the HR job is torchrun and two workers in a session of their own: all of them end."""
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy, "--hr-gpus", str(hr_gpus))
    record = wait_for_job(process, run_copy, "hr", "sampling")
    sent = time.time()
    process.send_signal(signum)  # the CLI alone, as a scheduler or `kill PID` does
    code = process.wait(timeout=120)
    assert_nothing_left(run_copy)  # at once: the job finished its step before the CLI returned
    stderr = process.stderr.read()
    print(f"{signal.Signals(signum).name} to the CLI: exit after {time.time() - sent:.1f} s")
    assert code == 128 + signum and f"stopped by {signal.Signals(signum).name}" in stderr, stderr[-3000:]
    stop = last_event(run_copy, "hr", record["item"])
    assert stop["action"] == "interrupted" and stop["time"] > sent
    assert not [e for e in events(run_copy) if e["time"] > sent and e["action"] in ("started", "computed")]


def test_pixelwizard_stop_ends_the_run_from_another_terminal_and_status_shows_it_first(weights, slow_hr, finished_run,
                                                                                       run_copy):
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy)
    record = wait_for_job(process, run_copy, "hr", "sampling")
    shown = " ".join(pixelwizard("status", run_copy).stdout.split())
    assert f"a run holds this directory: pixelwizard generate (pid {process.pid}" in shown
    assert f"hr shard {record['shard']} (pid {record['pid']}, 4 prompts: " in shown and "sampling" in shown
    stopped = pixelwizard("stop", run_copy)
    assert process.wait(timeout=10) == 128 + signal.SIGTERM  # `stop` returned after the run had ended
    assert_nothing_left(run_copy)
    assert "stopped in" in stopped.stderr and "pixelwizard generate" in stopped.stderr
    assert "stopped by SIGTERM" in process.stderr.read()
    assert pixelwizard("stop", run_copy).stderr.strip() == f"nothing runs in {run_copy}"


def test_a_killed_launcher_takes_its_stage_script_with_it(weights, slow_hr, finished_run, run_copy):
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy)
    record = wait_for_job(process, run_copy, "hr", "sampling")
    os.kill(record["pid"], signal.SIGKILL)  # the small wrapper Snakemake started, not the stage script
    killed = time.time()
    assert process.wait(timeout=120) == 1  # Snakemake saw the job fail; the run goes on with the others
    assert_nothing_left(run_copy)
    stop = [e for e in events(run_copy) if e["id"] == record["item"] and e["stage"] == "hr"][-1]
    assert stop["action"] == "interrupted" and stop["time"] > killed  # SIGTERM from the kernel: a clean stop


def test_a_sigkilled_stage_job_is_named_and_counted_as_failed(weights, slow_hr, finished_run, run_copy):
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy)
    record = wait_for_job(process, run_copy, "hr", "sampling")
    script = psutil.Process(record["script"][0])
    assert "pixelwizard.workflow.stages.hr" in " ".join(script.cmdline())
    script.kill()  # what the OOM killer does
    assert process.wait(timeout=120) == 1
    assert_nothing_left(run_copy)
    stderr = process.stderr.read()
    said = " ".join(stderr.split())
    prompts = ", ".join(record["prompts"])
    killed = f"its job (shard {record['shard']}: {prompts}) was killed by signal 9 (SIGKILL)"
    assert f"failed hr {record['item']}: {killed}: out of memory?" in said  # as it happened
    assert table_cell(stderr, "hr", "failed") == "1", stderr  # counted in the summary's table
    assert "A job was killed by SIGKILL" in said and "--cores" in said
    status = " ".join(pixelwizard("status", run_copy).stdout.split())
    assert f"hr: 1 failed ({record['item']}): {killed}" in status  # status's line for the reason


def test_a_job_left_by_a_killed_run_is_named_shown_and_stopped(weights, slow_hr, finished_run, run_copy):
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy)
    record = wait_for_job(process, run_copy, "hr", "sampling")
    snakemake = psutil.Process(process.pid).children()
    for victim in [psutil.Process(process.pid), *snakemake]:  # the CLI and Snakemake, not their jobs
        victim.kill()
    process.wait()
    refused = generate(weights, finished_run.parent / "prompts.jsonl", run_copy, *slow_hr, *SLOW_HR, check=False)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "stage jobs of an earlier run are still working here" in said
    assert f"hr shard {record['shard']} (pid {record['pid']}, 4 prompts" in said and "pixelwizard stop" in said
    shown = " ".join(pixelwizard("status", run_copy).stdout.split())
    assert "no run holds this directory, but stage jobs work in it" in shown and f"pid {record['pid']}" in shown
    stopped = pixelwizard("stop", run_copy)
    assert f"hr shard {record['shard']}" in stopped.stderr
    assert_nothing_left(run_copy)


def test_jobs_of_a_snakemake_killed_alone_are_stopped_before_the_cli_returns(weights, slow_hr, finished_run, run_copy):
    process = start_slow_hr(weights, slow_hr, finished_run, run_copy)
    record = wait_for_job(process, run_copy, "hr", "sampling")
    (snakemake,) = psutil.Process(process.pid).children()
    snakemake.kill()
    assert process.wait(timeout=120) == 1
    assert_nothing_left(run_copy)
    said = " ".join(process.stderr.read().split())
    assert "Snakemake ended (killed by signal 9 (SIGKILL)) while jobs still ran (hr shard " in said
    assert f"hr shard {record['shard']}" in said.split("while jobs still ran")[1]
