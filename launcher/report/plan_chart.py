"""``ftl plan --png``: the plan's per-rank memory of every role as stacked bars (one segment per
memory term), against the capacity of one GPU (``resources.gpu_memory_gb``).

The numbers are the planner's (``plan["memory"]``, see ``launcher.plan.sizing.memory_section``):
bytes per rank for GPU terms. A last bar shows what one GPU holds in total, as the planner's
verdict counts it: every role that shares the GPU (one SPMD group, or RL roles colocated), or
the fullest role when RL roles have GPUs of their own, times the ranks that share a GPU, plus
the CUDA/NCCL reserve. On a CPU-only plan the bars are per rank in host RAM and there is no
GPU line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.plan.view import TERM_ORDER, size_text
from launcher.report.curves import DPI, PNG_METADATA

GB = 1e9
RESERVE = "CUDA/NCCL reserve"


def _terms(roles: dict[str, Any]) -> list[str]:
    terms = [t for t in TERM_ORDER if any(t in r["gpu"] for r in roles.values())]
    return terms + [t for r in roles.values() for t in r["gpu"] if t not in terms]


def gpu_total_parts(memory: dict[str, Any]) -> dict[str, float]:
    """What one GPU holds, by role, in bytes, summing to ``per_gpu.total_bytes``."""
    roles, per_gpu = memory["roles"], memory["per_gpu"]
    if memory.get("placement") == "separate":
        fullest = max(roles, key=lambda name: roles[name]["total_gpu_bytes"])
        parts = {fullest: float(per_gpu["roles_bytes"])}
    else:
        rank = sum(r["total_gpu_bytes"] for r in roles.values()) or 1
        share = per_gpu["roles_bytes"] / rank  # ranks that share one GPU (fractional gpus_per_worker)
        parts = {name: r["total_gpu_bytes"] * share for name, r in roles.items()}
    return {**parts, RESERVE: float(per_gpu["reserve_bytes"])}


def plan_figure(plan: dict[str, Any]) -> Any:
    """The stacked-bar ``Figure`` of ``plan`` (a ``launcher.plan.planner.make_plan`` result)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    memory = plan["memory"]
    roles = memory["roles"]
    on_gpu = memory.get("device") == "gpu"
    terms = _terms(roles)
    cmap = colormaps["tab20"]
    colors = {term: cmap(i % 20) for i, term in enumerate(terms)}
    separate = memory.get("placement") == "separate"
    labels = list(roles) + ([f"{'fullest' if separate else 'one'} GPU (total)"] if on_gpu else [])
    fig = Figure(figsize=(max(7.0, 1.3 * len(labels) + 4.0), 4.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = range(len(labels))
    bottoms = [0.0] * len(labels)
    for term in terms:
        heights = [roles[name]["gpu"].get(term, 0) / GB for name in roles] + ([0.0] if on_gpu else [])
        ax.bar(x, heights, bottom=bottoms, color=colors[term], label=term, width=0.6, edgecolor="white",
               linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    if on_gpu:
        bottom = 0.0
        for part, size in gpu_total_parts(memory).items():
            ax.bar(len(labels) - 1, size / GB, bottom=bottom, width=0.6, edgecolor="white",
                   color="#bbbbbb" if part == RESERVE else "#8c8c8c", hatch="//" if part == RESERVE else None)
            if size / GB > 0.04 * max(memory["per_gpu"]["total_bytes"] / GB, 1e-9):
                ax.text(len(labels) - 1, bottom + size / GB / 2, part, ha="center", va="center", fontsize=7,
                        color="black")
            bottom += size / GB
        limit = memory["per_gpu"]["limit_bytes"] / GB
        ax.axhline(limit, color="black", linestyle="--", linewidth=1.5,
                   label=f"GPU capacity ({limit:g} GB, resources.gpu_memory_gb)")
        verdict = "fits" if memory["per_gpu"]["fits"] else "does NOT fit"
        ax.set_ylabel("GB per GPU (10^9 bytes)")
        ax.set_title(f"{plan['name']}: memory per GPU by role ({verdict})", fontsize=11)
        ax.set_ylim(0, max(limit, memory["per_gpu"]["total_bytes"] / GB) * 1.12)
    else:
        node = memory["per_node_cpu"]
        ax.set_ylabel("GB per rank (10^9 bytes)")
        ax.set_title(f"{plan['name']}: memory per rank by role (CPU run: held in host RAM; "
                     f"{node['total_bytes'] / GB:.2f} of {node['limit_bytes'] / GB:g} GB per node)",
                     fontsize=10)
    totals = [sum(r["gpu"].values()) for r in roles.values()]
    if on_gpu:
        totals.append(memory["per_gpu"]["total_bytes"])
    for i, total in enumerate(totals):  # the number on top: small roles are invisible next to 80 GB
        ax.annotate(size_text(int(total)), (i, total / GB), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def write_plan_png(plan: dict[str, Any], path: str | Path) -> Path:
    """Draw ``plan``'s memory chart into ``path`` (a PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan_figure(plan).savefig(path, format="png", metadata=PNG_METADATA)
    return path
