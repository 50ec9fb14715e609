"""Hyperparameter sweeps (``ftl sweep``) on Ray Tune: every trial is a whole ftl run.

A trial starts one process (``python -m launcher.tools.sweep SPEC``) that prepares its run folder
(``prepare_run`` with the trial's values as ``--set`` overrides: validated, preflighted and
planned like ``ftl run``) under ``<runs>/sweep-<name>-<time>/`` and drives it on the sweep's
embedded Ray with the driver's ``run_trainer``: the same TorchTrainer and per-rank loop as
``ftl run``, and a folder that can be listed, exported and evaluated like any other.

Why a process per trial rather than ``TorchTrainer.fit()`` inside the trial actor: when ASHA
stops a trial, Tune ends the trial's actor at once. A trainer owned by that actor would leave
its worker placement group reserved (Ray Train's cleaner needs the dashboard's state API) and
later trials would wait forever for CPUs. The trial process is its own Ray job: when it dies
(it is killed with its parent), Ray frees everything the job held.

The trial follows the run's ``metrics.jsonl`` as it grows and reports every row holding the
sweep metric to Tune, keyed by training step, so ASHA compares trials at the same step.

    params.py   ``--param`` specs: parsing, search domains, checks against the config
    trial.py    one trial: Tune's trial function and the trial's own process (``__main__``)
    driver.py   the sweep: an embedded Ray running Tune, ``results.json`` and ``best.yaml``
    report.py   the results table
"""

from launcher.tools.sweep.driver import (
    ASHA_REDUCTION_FACTOR,
    SLOT,
    default_concurrency,
    run_sweep,
)
from launcher.tools.sweep.params import (
    ACCEPTED_FORMS,
    DISTRIBUTIONS,
    SCHEDULERS,
    ParamSpec,
    check_sweep,
    parse_param,
)
from launcher.tools.sweep.report import render_results
from launcher.tools.sweep.trial import run_trial, trial_main

__all__ = [
    "ACCEPTED_FORMS",
    "ASHA_REDUCTION_FACTOR",
    "DISTRIBUTIONS",
    "SCHEDULERS",
    "SLOT",
    "ParamSpec",
    "check_sweep",
    "default_concurrency",
    "parse_param",
    "render_results",
    "run_sweep",
    "run_trial",
    "trial_main",
]
