"""A private single-node SLURM cluster on this machine (munge + slurmctld + slurmd), for the SLURM test and for
trying `pixelwizard generate --profile slurm` without a real cluster.

Everything lives under one prefix (config, munge key and socket, state, logs, pid files, fake GPU devices); nothing
is written to /etc and the ports are not SLURM's defaults, so it stays clear of a real SLURM on the same host.
Needs root and Debian/Ubuntu's `slurm-wlm` and `munge` packages (installed with apt-get when missing).

    python tests/slurm_local.py up        # prints `export ...` lines: eval "$(python tests/slurm_local.py up)"
    python tests/slurm_local.py status
    python tests/slurm_local.py down

Two things the cluster does on purpose:
- The node declares production-sized resources (CPUs, memory, GPUs) whatever the hardware, with
  `SlurmdParameters=config_overrides`, so that profiles/slurm runs unchanged. Nothing enforces them: a job asking
  for 16 CPUs runs on the 2 real cores.
- The GPUs are character devices that behave like /dev/null: slurmd rejects plain files, and only with devices
  does `--gpus=N` set CUDA_VISIBLE_DEVICES. torch sees no CUDA, so the stages run on the CPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {"slurm-wlm": ("slurmctld", "slurmd", "sbatch", "squeue", "srun"), "munge": ("munged", "mungekey")}
READY_STATES = ("idle", "mixed", "allocated")
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED")


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the local cluster (not root, no apt, no mknod, ...); the message says why."""


@dataclass(frozen=True)
class LocalSlurm:
    prefix: Path = Path("/tmp/pixelwizard-slurm")
    ctld_port: int = 16817
    slurmd_port: int = 16818
    partition: str = "pixelwizard"
    gpus: int = 4  # fake GPU devices on the node
    cpus: int = 64  # declared, not real
    mem_mb: int = 512_000  # declared, not real
    min_job_age: int = 600  # >= 3x snakemake's first status delay, or the plugin falls back to sacct

    # ---- where things are -------------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.prefix / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.prefix / "munge" / "munge.socket"

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    def pid_file(self, daemon: str) -> Path:
        return self.prefix / ("munge" if daemon == "munged" else "run") / f"{daemon}.pid"

    @property
    def node(self) -> str:
        return socket.gethostname().split(".")[0]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with the cluster's client settings: SLURM_CONF, and the srun shim first on
        PATH. The shim is what makes SLURM_CONF survive inside jobs: the plugin's job step deletes every SLURM_*
        variable before its nested `srun`, which then finds no config outside /etc/slurm."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        path = os.pathsep.join([str(self.bin_dir), self._path_without_shim(env)])
        return {**env, "SLURM_CONF": str(self.conf), "PATH": path}

    def _path_without_shim(self, env: dict[str, str]) -> str:
        parts = env.get("PATH", os.defpath).split(os.pathsep)
        return os.pathsep.join(p for p in parts if p and p != str(self.bin_dir))

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def up(self, timeout: float = 60) -> dict[str, str]:
        """Install what is missing, write the config, start what is not running (restarting SLURM if the config
        changed) and wait for the node to take jobs. Idempotent. Returns the environment for SLURM clients."""
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local cluster runs its daemons as root (and apt-get needs root)")
        ensure_packages()
        self._write_files()
        changed = self._write_if_changed(self.conf, self._slurm_conf())
        changed |= self._write_if_changed(self.prefix / "etc" / "gres.conf", self._gres_conf())
        if changed:
            for daemon in ("slurmd", "slurmctld"):
                stop_pid_file(self.pid_file(daemon))
        self._start_munge()
        env = self.env()
        if not pid_alive(self.pid_file("slurmctld")):
            check([shutil.which("slurmctld"), "-f", str(self.conf)], env)  # daemonizes; keeps saved state
        if not pid_alive(self.pid_file("slurmd")):
            check([shutil.which("slurmd"), "-f", str(self.conf)], env)
        self._wait_for_node(env, timeout)
        return env

    def down(self, timeout: float = 30) -> None:
        """Cancel every job (their processes outlive slurmd otherwise), then stop our daemons by pid file."""
        if pid_alive(self.pid_file("slurmctld")):
            env = self.env()
            try:
                subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and any(j["JobState"] in ACTIVE_STATES for j in self.jobs(env)):
                    time.sleep(0.5)
            except (RuntimeError, subprocess.SubprocessError):
                pass  # a controller that does not answer: stopping the daemons is all that is left
        for daemon in ("slurmd", "slurmctld", "munged"):
            stop_pid_file(self.pid_file(daemon))

    def status(self) -> str:
        daemons = ("munged", "slurmctld", "slurmd")
        lines = [f"{d}: {'running' if pid_alive(self.pid_file(d)) else 'down'}" for d in daemons]
        if pid_alive(self.pid_file("slurmctld")):
            info = subprocess.run(["sinfo", "-N", "-o", "%N %P %T %c %m %G"], env=self.env(), capture_output=True,
                                  text=True, timeout=30)
            lines.append((info.stdout + info.stderr).strip())
        return "\n".join(lines)

    def jobs(self, env: dict[str, str] | None = None) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge seconds), as `scontrol show job` fields:
        JobId, JobState, Comment (the plugin writes rule_<rule>_wildcards_<...> there), TRES, TresPerJob, ..."""
        result = subprocess.run(["scontrol", "-o", "show", "job"], env=env or self.env(), capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"scontrol show job failed: {result.stderr.strip()}")
        return [dict(field.partition("=")[::2] for field in line.split()) for line in result.stdout.splitlines()
                if line.startswith("JobId=")]

    # ---- pieces -------------------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        for name in ("etc", "state", "spool", "log", "run", "bin", "dev"):
            (self.prefix / name).mkdir(parents=True, exist_ok=True)
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o700)  # munged refuses a key directory others can write to
        key = munge_dir / "munge.key"
        if not key.exists():
            check(["mungekey", "--create", f"--keyfile={key}"])
        key.chmod(0o400)
        for i in range(self.gpus):
            device = self.prefix / "dev" / f"nvidia{i}"
            if device.exists() and not stat.S_ISCHR(device.stat().st_mode):
                device.unlink()
            if not device.exists():
                try:
                    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # same device as /dev/null
                except OSError as err:
                    raise SlurmUnavailable(f"cannot create fake GPU device {device}: {err}") from None
        real_srun = shutil.which("srun", path=self._path_without_shim(os.environ))
        self._write_if_changed(self.bin_dir / "srun", "#!/bin/sh\n"
                               f"export SLURM_CONF=\"${{SLURM_CONF:-{self.conf}}}\"\n"
                               f"exec {shlex.quote(str(real_srun))} \"$@\"\n")
        (self.bin_dir / "srun").chmod(0o755)

    def _slurm_conf(self) -> str:
        p = self.prefix
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        return "\n".join([
            "# written by tests/slurm_local.py",
            "ClusterName=pixelwizard",
            f"SlurmctldHost={self.node}",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={p / 'state'}",
            f"SlurmdSpoolDir={p / 'spool'}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={p / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={p / 'log' / 'slurmd.log'}",
            # no cgroups and no systemd needed: plain process tracking, no CPU binding
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1000",  # without it a job without --mem takes the whole node
            "SlurmdParameters=config_overrides",  # trust the declared node size below, not the hardware
            "MailProg=/bin/true",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",  # so `sacct` fails: use squeue for job status
            f"MinJobAge={self.min_job_age}",
            "ReturnToService=2",
            "SlurmdTimeout=300",
            "InactiveLimit=0",
            "KillWait=5",
            *(["GresTypes=gpu"] if self.gpus else []),
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb}{gres} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _gres_conf(self) -> str:
        if not self.gpus:
            return ""
        devices = self.prefix / "dev" / f"nvidia[0-{self.gpus - 1}]"
        return f"AutoDetect=off\nNodeName={self.node} Name=gpu File={devices}\n"

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> bool:
        if path.exists() and path.read_text() == text:
            return False
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return True

    def _start_munge(self) -> None:
        sock, d = self.munge_socket, self.munge_socket.parent
        if not pid_alive(self.pid_file("munged")):
            for stale in (sock, Path(f"{sock}.lock")):
                stale.unlink(missing_ok=True)
            check(["munged", "--force", f"--socket={sock}", f"--key-file={d / 'munge.key'}",
                   f"--pid-file={self.pid_file('munged')}", f"--log-file={d / 'munged.log'}",
                   f"--seed-file={d / 'munged.seed'}"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cred = subprocess.run(["munge", "-S", str(sock), "-n"], capture_output=True, stdin=subprocess.DEVNULL)
            if cred.returncode == 0 and subprocess.run(["unmunge", "-S", str(sock)], input=cred.stdout,
                                                       capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"munged did not answer on {sock}; see {d / 'munged.log'}")

    def _wait_for_node(self, env: dict[str, str], timeout: float) -> None:
        deadline, state = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            info = subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], env=env, capture_output=True,
                                  text=True, timeout=30)
            state = info.stdout.strip()
            if state.rstrip("*~#") in READY_STATES:
                return
            if state.startswith(("drain", "down")):  # left over from an earlier config: bring it back
                subprocess.run(["scontrol", "update", f"nodename={self.node}", "state=resume"], env=env,
                               capture_output=True, timeout=30)
            time.sleep(0.5)
        logs = "\n".join(tail(self.prefix / "log" / f"{d}.log") for d in ("slurmctld", "slurmd"))
        raise SlurmUnavailable(f"node {self.node} not ready after {timeout:.0f} s (state {state!r}):\n{logs}")


def ensure_packages() -> None:
    """apt-get install slurm-wlm / munge if their programs are missing (root only)."""
    missing = [pkg for pkg, programs in PACKAGES.items() if not all(shutil.which(p) for p in programs)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"{', '.join(missing)} not installed and not root (apt-get needs root)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"{', '.join(missing)} not installed and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
                 *missing]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")


def check(cmd: list, env: dict[str, str] | None = None) -> None:
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SlurmUnavailable(f"{' '.join(map(str, cmd))} failed ({result.returncode}): "
                               f"{(result.stdout + result.stderr).strip()[-1000:]}")


def pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def stop_pid_file(pid_file: Path, timeout: float = 20) -> None:
    """SIGTERM the daemon named by `pid_file`, SIGKILL it if it lingers; only ever our own daemons."""
    if pid_alive(pid_file):
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--prefix", type=Path, default=LocalSlurm.prefix)
    args = parser.parse_args(argv)
    cluster = LocalSlurm(prefix=args.prefix.resolve())
    try:
        if args.action == "up":
            env = cluster.up()
            print(f"export SLURM_CONF={shlex.quote(env['SLURM_CONF'])} PATH={shlex.quote(env['PATH'])}")
        elif args.action == "down":
            cluster.down()
        else:
            print(cluster.status())
    except SlurmUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
