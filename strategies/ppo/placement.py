"""Where each role's actors run: Ray placement groups for ``placement: separate | colocate``.

separate: one placement group per role, a bundle per actor with that role's own CPUs/GPUs
(``resources`` for the policy trainer group, ``<method>.critic`` / ``reference`` / ``reward`` /
``rollout`` for the others). Roles then run truly side by side, which is what lets rollout
overlap training (``async``).
colocate: one placement group of ``resources.num_workers`` bundles (the trainer's CPUs/GPUs);
actor ``i`` of every role lands on bundle ``i mod n`` and asks for an equal fraction of it, so
all models share the same devices (OpenRLHF's colocated mode). Per-role resources are unused.

The request is checked against the cluster before anything is placed: a placement group that
cannot be satisfied would wait forever, so the error names the role and fields to change.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from launcher.core.errors import Problem, UserError

READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class RoleDemand:
    role: str
    num_workers: int
    cpus: float
    gpus: float
    where: str          # config path of the role's resources, for error messages


@dataclass(frozen=True)
class Slot:
    pg: Any
    bundle: int
    num_cpus: float
    num_gpus: float

    def actor_options(self) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=self.bundle)}


def role_demands(cfg: Any, roles: list[str]) -> list[RoleDemand]:
    """Resources each started role asks for (in the order given)."""
    opts = cfg.method_options()
    out = []
    for role in roles:
        if role == "policy":
            r = cfg.resources
            out.append(RoleDemand(role, r.num_workers, r.cpus_per_worker, r.gpus_per_worker, "resources"))
            continue
        section = getattr(opts, role)
        out.append(RoleDemand(role, section.num_workers, section.cpus_per_worker, section.gpus_per_worker,
                              f"{cfg.method}.{role}"))
    return out


class Placement:
    def __init__(self, cfg: Any, demands: list[RoleDemand]):
        import ray
        from ray.util.placement_group import placement_group

        self.mode = cfg.method_options().placement
        self.groups: list[Any] = []
        self._slots: dict[str, list[Slot]] = {}
        if self.mode == "colocate":
            n = cfg.resources.num_workers
            bundle = {"CPU": cfg.resources.cpus_per_worker}
            if cfg.resources.gpus_per_worker:
                bundle["GPU"] = cfg.resources.gpus_per_worker
            _check_fits([(f"colocated bundles ({n} x resources)", "resources", bundle, n)])
            pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK", name="ftl-colocate")
            self.groups.append(pg)
            load = Counter(i % n for d in demands for i in range(d.num_workers))
            for d in demands:
                self._slots[d.role] = [
                    Slot(pg, i % n, bundle["CPU"] / load[i % n], bundle.get("GPU", 0) / load[i % n])
                    for i in range(d.num_workers)]
        else:
            wanted = []
            for d in demands:
                bundle = {"CPU": d.cpus}
                if d.gpus:
                    bundle["GPU"] = d.gpus
                label = f"role {d.role} ({d.num_workers} x {_fmt(bundle)})"
                wanted.append((label, d.where, bundle, d.num_workers))
            _check_fits(wanted)
            for d, (_, _, bundle, n) in zip(demands, wanted):
                pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK", name=f"ftl-{d.role}")
                self.groups.append(pg)
                self._slots[d.role] = [Slot(pg, i, d.cpus, d.gpus) for i in range(n)]
        try:
            ray.get([pg.ready() for pg in self.groups], timeout=READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.remove()
            raise UserError(Problem("resources", f"Ray could not place the roles within {READY_TIMEOUT_S} s",
                                    "the cluster is busy or lacks the requested CPUs/GPUs")) from None

    def slot(self, role: str, index: int) -> Slot:
        return self._slots[role][index]

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "roles": {
            role: [{"bundle": s.bundle, "num_cpus": s.num_cpus, "num_gpus": s.num_gpus} for s in slots]
            for role, slots in self._slots.items()}}

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups:
            with contextlib.suppress(Exception):  # already gone with the cluster
                remove_placement_group(pg)
        self.groups = []


def _fmt(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items())


def _check_fits(wanted: list[tuple[str, str, dict[str, float], int]]) -> None:
    """Total request vs the cluster's resources, with every role's share in the message."""
    import ray

    have = ray.cluster_resources()
    for kind in ("CPU", "GPU"):
        need = sum(bundle.get(kind, 0) * n for _, _, bundle, n in wanted)
        if need > have.get(kind, 0) + 1e-9:
            parts = "; ".join(f"{label}" for label, _, bundle, _ in wanted if bundle.get(kind))
            fields = sorted({where for _, where, bundle, _ in wanted if bundle.get(kind)})
            raise UserError(Problem(
                ", ".join(fields), f"the roles need {need:g} {kind} in all and the Ray cluster has "
                f"{have.get(kind, 0):g}: {parts}",
                "lower the roles' num_workers / cpus_per_worker / gpus_per_worker, use placement: "
                "colocate, or (local target) set cluster.local.num_cpus to oversubscribe on purpose"))
