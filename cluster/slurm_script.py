"""Render the sbatch script that brings up Ray on a Slurm allocation and runs ftl's driver.

Shape: Ray head on the batch host (the allocation's first node), one ``ray start`` per other
node through ``srun``, a bounded wait (polling, never a fixed sleep) until every node has
joined, the driver, then teardown of what the script started.

Preemption (``launcher.core.preemption``): with ``requeue`` (the default) Slurm sends the batch shell
USR1 ``warning_s`` seconds before the time limit; the trap writes the run's stop request, every
rank saves at the next step boundary, the driver exits 75 and the script requeues its own job,
which resumes from that checkpoint. The driver runs in the background because bash runs traps
only between commands: ``wait`` returns on a signal, and the loop waits again until the driver
has really exited. A SIGTERM (scancel, an admin's requeue, preemption) also writes the request,
but Slurm signals every process of the job, so a requeued job usually resumes from the last
periodic checkpoint instead; the losses are the same either way. Ray uses token auth with a
token made in the job (never written to a file) and a ``mktemp`` temp dir. Every value that
reaches the shell is ``shlex.quote``d; ``#SBATCH`` values are checked against a safe character set,
since sbatch parses those lines itself and a newline or quote there cannot be escaped.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from launcher.core.errors import Problem, UserError

_SAFE_DIRECTIVE = re.compile(r"^[A-Za-z0-9_.,:/@+=%-]+$")


def _directive(flag: str, value: Any, where: str) -> str:
    text = str(value)
    if not _SAFE_DIRECTIVE.match(text):
        raise UserError(Problem(where, f"{text!r} cannot be put in an #SBATCH line",
                                "use letters, digits and _ . , : / @ + = % - only"))
    return f"#SBATCH --{flag}={text}"


def job_name(name: str) -> str:
    """Slurm job names are display-only: keep the safe characters of the run name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "ftl"


def render_sbatch(cfg: Any, run_dir: str, job_dir: str) -> str:
    s = cfg.cluster.slurm
    per_node_workers = -(-cfg.resources.num_workers // s.nodes)
    cpus = s.cpus_per_node or max(1, int(per_node_workers * cfg.resources.cpus_per_worker))
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name(cfg.name)}",
             _directive("nodes", s.nodes, "cluster.slurm.nodes"),
             "#SBATCH --ntasks-per-node=1",
             _directive("cpus-per-task", cpus, "cluster.slurm.cpus_per_node"),
             _directive("time", s.time, "cluster.slurm.time")]
    if s.gpus_per_node:
        lines.append(_directive("gres", f"gpu:{s.gpus_per_node}", "cluster.slurm.gpus_per_node"))
    for flag, value, field in (("mem", s.mem, "mem"), ("partition", s.partition, "partition"),
                               ("account", s.account, "account"), ("qos", s.qos, "qos"),
                               ("constraint", s.constraint, "constraint")):
        if value:
            lines.append(_directive(flag, value, f"cluster.slurm.{field}"))
    if s.exclusive:
        lines.append("#SBATCH --exclusive")
    if s.container_image:
        lines.append(_directive("container-image", s.container_image, "cluster.slurm.container_image"))
    if s.requeue:  # the output file is appended to by the requeued job, not replaced
        lines += [_directive("signal", f"B:USR1@{s.warning_s}", "cluster.slurm.warning_s"),
                  "#SBATCH --requeue", "#SBATCH --open-mode=append"]
    if any(c in run_dir for c in "\n\r%"):
        raise UserError(Problem("checkpoint.dir", "the run folder path cannot contain newlines or '%'"))
    # --output is given on sbatch's command line (an argv item, no parsing), see cluster.slurm.
    container = f" --container-image={q(s.container_image)}" if s.container_image else ""
    setup = "\n".join(s.setup)
    py = q(s.python)
    workers = s.nodes - 1
    body = f"""
set -uo pipefail
RUN_DIR={q(run_dir)}
JOB_DIR={q(job_dir)}
PY={py}
NODES={s.nodes}
JOIN_TIMEOUT={int(s.join_timeout_s)}
cd "$JOB_DIR"
REQUEUE=0
ask_stop() {{
  echo "ftl: $1: asking the run to save at the next step and stop"
  mkdir -p "$RUN_DIR/logs" && echo "$1" > "$RUN_DIR/logs/.stop-request.$$" &&
    mv -f "$RUN_DIR/logs/.stop-request.$$" "$RUN_DIR/logs/stop-request"
}}
trap 'ask_stop "Slurm time-limit warning (USR1)"; REQUEUE={1 if s.requeue else 0}' USR1
trap 'ask_stop "SIGTERM from Slurm"' TERM
# --- user setup (cluster.slurm.setup)
{setup}
# --- Ray head on this (the first) node, private temp dir, free ports
HEAD_IP=$(hostname --ip-address | awk '{{print $1}}')
read -r PORT P_AGENT P_GRPC P_RTENV P_METRICS P_CLIENT < <("$PY" -c 'import socket
ss = [socket.socket() for _ in range(6)]
[s.bind(("", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
# A private temp dir (mktemp: unpredictable name, mode 0700) and a per-job token: Ray refuses
# every connection without it. srun hands the environment, token included, to the other nodes.
export RAY_TMP=$(mktemp -d "/tmp/ftl-ray-$SLURM_JOB_ID.XXXXXX")
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
export RAY_ADDRESS="$HEAD_IP:$PORT"
echo "ftl: Ray head at $RAY_ADDRESS (token auth)"
PIDS=()
cleanup() {{ for p in "${{PIDS[@]}}"; do kill "$p" 2>/dev/null; done; wait; rm -rf "$RAY_TMP"; }}
trap cleanup EXIT
# No SIGTERM drain (Ray waits up to 30 s at teardown for it): ftl's stop request does the saving.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
"$PY" -m ray.scripts.scripts start --head --block --node-ip-address="$HEAD_IP" --port="$PORT" \\
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus={s.gpus_per_node} --temp-dir="$RAY_TMP" \\
  --include-dashboard=false --dashboard-agent-listen-port="$P_AGENT" \\
  --dashboard-agent-grpc-port="$P_GRPC" --runtime-env-agent-port="$P_RTENV" \\
  --metrics-export-port="$P_METRICS" --ray-client-server-port="$P_CLIENT" --disable-usage-stats &
PIDS+=($!)
"""
    if workers:
        worker_cmd = (setup + "\n" + '"$0" -m ray.scripts.scripts start --block --address="$1" '
                      f'--num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus={s.gpus_per_node} --disable-usage-stats')
        body += f"""# --- one Ray worker per other node
srun --nodes={workers} --ntasks={workers} --ntasks-per-node=1 --exclude="$(hostname)"{container} \\
  bash -c {q(worker_cmd)} \\
  "$PY" "$RAY_ADDRESS" &
PIDS+=($!)
"""
    body += """# --- wait until every node has joined (bounded; no fixed sleep)
"$PY" - "$NODES" "$JOIN_TIMEOUT" <<'WAIT'
import sys, time
import ray
want, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.time() + timeout
while True:
    try:
        ray.init(address="auto", logging_level="ERROR")
        alive = sum(1 for n in ray.nodes() if n["Alive"])
        ray.shutdown()
    except Exception:
        alive = 0
    if alive >= want:
        print(f"ftl: {alive}/{want} nodes joined", flush=True)
        break
    if time.time() > deadline:
        sys.exit(f"ftl: only {alive}/{want} nodes joined within {timeout:.0f} s; see this log")
    time.sleep(2)
WAIT
[ $? -eq 0 ] || exit 3
# --- the driver (in the background, so that the traps above run while it trains)
"$PY" -m launcher.run.driver "$RUN_DIR" --seed ftl-run &
DRIVER=$!
while kill -0 "$DRIVER" 2>/dev/null; do wait "$DRIVER"; done
wait "$DRIVER"; RC=$?
if [ "$RC" -eq 75 ] && [ "$REQUEUE" -eq 1 ]; then
  echo "ftl: the run saved and stopped before the time limit; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$RC"
"""
    return "\n".join(lines) + "\n" + body
