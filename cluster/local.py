"""``local``: an embedded Ray runtime on this machine, private to the run.

It never attaches to another Ray on the host: ``address="local"`` always starts a new
instance, in a private temp dir, with token auth disabled (a local ``ray.init`` would
otherwise write ``~/.ray/auth_token`` and silently change later ``ray start`` commands), no
dashboard and no fixed ports. It is shut down when the run ends, also on Ctrl-C; if that
shutdown does not finish within ``FTL_INTERRUPT_GRACE_S`` (30 s) of Ctrl-C, the processes it
started (all descendants of this process) are killed, so Ctrl-C always stops everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.base import Target
from launcher.core import env, failpoints, preemption, terminal
from launcher.core.errors import Preempted, Problem, UserError
from launcher.run.ray_patches import SETUP_HOOK
from launcher.run.rundir import RunFolder


class LocalTarget(Target):
    name = "local"

    def num_cpus(self, cfg: Any) -> int:
        return cfg.cluster.local.num_cpus or os.cpu_count() or 1

    def preflight(self, cfg: Any) -> None:
        """The embedded Ray offers ``num_cpus`` CPUs and this machine's CUDA devices; a request
        beyond them would wait in Ray instead of running."""
        workers = cfg.resources.min_workers or cfg.resources.num_workers  # elastic: the fewest
        need = workers * cfg.resources.cpus_per_worker
        have = self.num_cpus(cfg)
        if need > have:
            raise UserError(Problem(
                "resources", f"{workers} workers x {cfg.resources.cpus_per_worker:g} "
                f"CPUs need {need:g} CPUs; the local Ray has {have}",
                "lower resources.num_workers/cpus_per_worker, or set cluster.local.num_cpus "
                "to oversubscribe on purpose"))
        if cfg.resources.gpus_per_worker > 0:
            import torch

            if not torch.cuda.is_available():
                raise UserError(Problem("resources.gpus_per_worker",
                                        "GPUs requested but this machine has no CUDA device",
                                        "set resources.gpus_per_worker: 0 to train on CPU"))
            from launcher.run.placement import NodeOffer, offer_problem, worker_demand

            problem = offer_problem(worker_demand(cfg), [NodeOffer(have, torch.cuda.device_count())],
                                    {"CPU": "resources", "GPU": "resources.gpus_per_worker"},
                                    f"this machine has {torch.cuda.device_count()} CUDA devices",
                                    "lower resources.num_workers or gpus_per_worker")
            if problem is not None:
                raise UserError(problem)

    def render(self, folder: RunFolder, cfg: Any) -> str:
        return (f"local: embedded Ray with {self.num_cpus(cfg)} CPUs; TorchTrainer with "
                f"{cfg.resources.num_workers} workers running launcher.train.loop.train_rank({folder.path})")

    def run(self, folder: RunFolder, *, progress: bool = True) -> dict[str, Any]:
        from launcher.metrics.console import follow
        from launcher.run.driver import run_trainer

        cfg = folder.load_config()
        temp_dir = start_private_ray(self.num_cpus(cfg))
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def drive() -> None:
            try:
                run_trainer(folder)
            except BaseException as exc:  # re-raised in the main thread
                outcome["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=drive, name="ftl-driver", daemon=True)
        on_interrupt = _interrupt_with_deadline(folder.logs / "interrupt-stacks.txt")
        previous = signal.signal(signal.SIGINT, on_interrupt)
        previous_term = signal.signal(signal.SIGTERM, _save_and_stop_on_term(folder, on_interrupt))
        try:
            thread.start()
            follow(folder.metrics, cfg.train.max_steps, done, Console(file=terminal.err()), enabled=progress)
            thread.join()
        finally:
            failpoints.hit("local.shutdown", 0)
            stop_private_ray(temp_dir)
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
        if "error" in outcome:
            raise outcome["error"]
        stopped = preemption.stopped_message(folder.path)
        if stopped:
            raise Preempted(stopped)
        return folder.summary() or {}


def start_private_ray(num_cpus: int, **options: Any) -> str:
    """A new Ray runtime for this process only (see the module docstring); returns its temp dir.

    Worker prestart is off: by default the raylet starts one idle Python worker per CPU at
    once, which on a small machine competes with the driver and Ray Train's actors for the
    cores. Measured on 2 cores: ``ray.init`` 3.2 s instead of 5.2 s, first step ~4 s sooner."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ftl-ray-", dir="/tmp")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False, configure_logging=False, runtime_env=SETUP_HOOK,
             _system_config={"enable_worker_prestart": False}, **options)
    return temp_dir


def stop_private_ray(temp_dir: str) -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _save_and_stop_on_term(folder: RunFolder, on_interrupt: Any) -> Any:
    """A SIGTERM handler (a scheduler or a pod being stopped): the first asks every rank to save
    at the next step boundary and stop (``launcher.core.preemption``), so ``ftl run --resume``
    continues exactly; a second one stops at once, as Ctrl-C does."""
    received = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            on_interrupt(signum, frame)
        received.append(signum)
        preemption.request_stop(folder.path, "SIGTERM")
        terminal.err().write("ftl: SIGTERM: saving at the next step boundary, then stopping "
                         "(a second SIGTERM or Ctrl-C stops at once)\n")
        terminal.err().flush()

    return handler


def _interrupt_with_deadline(stacks: Path) -> Any:
    """A SIGINT handler: raise KeyboardInterrupt as usual (the ``finally`` shuts Ray down), and
    start a watchdog in case that clean path blocks. Seen once in the test suite under load: a
    run kept training minutes after SIGINT. Whatever blocks, Ctrl-C must stop it all; the
    watchdog saves every thread's stack to ``stacks`` first, to find what blocked."""

    def handler(signum: int, frame: Any) -> None:
        grace = env.interrupt_grace_s()
        threading.Thread(target=_kill_tree_after, args=(grace, stacks), name="ftl-interrupt-deadline",
                         daemon=True).start()
        raise KeyboardInterrupt

    return handler


def _kill_tree_after(grace_s: float, stacks: Path) -> None:
    import faulthandler

    import psutil

    time.sleep(grace_s)
    with contextlib.suppress(OSError):
        stacks.parent.mkdir(parents=True, exist_ok=True)
        with stacks.open("w") as fh:
            faulthandler.dump_traceback(fh, all_threads=True)
    me = psutil.Process()
    tree = me.children(recursive=True)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(tree, timeout=10)
    terminal.err().write(f"interrupted: Ray did not shut down within {grace_s:g} s of Ctrl-C; killed the "
                     f"{len(tree)} processes this command started (thread stacks: {stacks})\n")
    terminal.err().flush()
    os._exit(130)
