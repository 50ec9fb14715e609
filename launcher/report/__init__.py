"""Reports a person can look at: curves, one self-contained HTML page, terminal sparklines.

A run folder holds JSON (``metrics.jsonl``, ``summary.json``, ``plan.json``); people compare
runs by curves, and offline (no W&B account, an air-gapped cluster) nothing else draws them.

    series.py     read a run folder: every numeric series of its metrics file, config, plan, summary
    sparkline.py  ▁▂▃▄▅▆▇█ for ``ftl list`` (no plotting library)
    curves.py     PNG curves of one run or several overlaid (matplotlib, Agg, imported lazily)
    plan_chart.py per-rank memory per role as stacked bars against the GPU's capacity
    page.py       the HTML page: images as data URIs, inline CSS, no script, no network
    build.py      ``write_report`` (``ftl report``) and ``write_run_report_safely`` (end of a run)

Nothing here is imported by ``launcher.cli`` at start-up; matplotlib is imported only by the
modules that draw, so ``ftl --help`` and ``ftl list`` stay fast.
"""
