"""Render the sbatch script that brings up Ray on a Slurm allocation and runs ftl's driver.

Shape: Ray head on the batch host (the allocation's first node), one ``ray start`` per other
node through ``srun``, a bounded wait (polling, never a fixed sleep) until every node has
joined, the driver, then teardown of what the script started. Every value that reaches the
shell is ``shlex.quote``d; ``#SBATCH`` values are checked against a safe character set,
since sbatch parses those lines itself and a newline or quote there cannot be escaped.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from launcher.errors import Problem, UserError

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
# --- user setup (cluster.slurm.setup)
{setup}
# --- Ray head on this (the first) node, private temp dir, free ports
HEAD_IP=$(hostname --ip-address | awk '{{print $1}}')
read -r PORT P_AGENT P_GRPC P_RTENV P_METRICS P_CLIENT < <("$PY" -c 'import socket
ss = [socket.socket() for _ in range(6)]
[s.bind(("", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
export RAY_TMP="/tmp/ftl-ray-$SLURM_JOB_ID"
export RAY_ADDRESS="$HEAD_IP:$PORT"
PIDS=()
cleanup() {{ for p in "${{PIDS[@]}}"; do kill "$p" 2>/dev/null; done; wait; rm -rf "$RAY_TMP"; }}
trap cleanup EXIT
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
# --- the driver
"$PY" -m launcher.driver "$RUN_DIR" --seed ftl-run
"""
    return "\n".join(lines) + "\n" + body
