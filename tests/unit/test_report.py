"""Reports (``launcher.report``) of run folders written by ftl's own writers
(``tests/helpers/report_runs.py``): PNG curves, the self-contained page, run comparison, the
plan's memory chart, the ``ftl list`` sparkline, and a report failure that stays a warning."""

from __future__ import annotations

import json
import logging
import re
from html import escape
from pathlib import Path

import pytest

from launcher.core.errors import UserError
from launcher.metrics.jsonl import read_metrics
from launcher.report.build import write_report, write_run_report_safely
from launcher.report.curves import curve_figure
from launcher.report.plan_chart import GB, plan_figure
from launcher.report.series import read_run, resolve_run
from launcher.report.sparkline import BLOCKS, loss_values, sparkline
from tests.helpers.report_runs import make_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(a supervised run whose loss falls 4 -> 0.5, an RL-like run 5 -> 1 with reward, KL and
    response length), both under one runs folder."""
    parent = tmp_path_factory.mktemp("runs")
    return make_run(parent, "alpha"), make_run(parent, "beta", start=5.0, end=1.0, rl=True)


def _valid_png(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG matplotlib can decode; fails on anything else."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100, (path, image.shape)
    return image.shape[:2]


def test_one_run_report_has_curves_and_a_self_contained_page(runs):
    alpha, _ = runs
    index = write_report([alpha])
    assert index == alpha / "report" / "index.html"
    for name in ("train-loss.png", "train-lr.png", "train-tokens_per_s.png", "eval-loss.png",
                 "eval-exact_match.png", "plan-memory.png"):
        assert (alpha / "report" / name).stat().st_size > 0
        _valid_png(alpha / "report" / name)
    assert not (alpha / "report" / "train-tokens.png").exists()  # a counter, not a curve
    html = index.read_text()
    summary = json.loads((alpha / "summary.json").read_text())
    final_loss = summary["final"]["eval/loss"]
    assert f"{final_loss:.4f}" in html  # in the before/after table
    assert escape(json.dumps(summary, indent=2)) in html  # and the raw summary
    assert escape((alpha / "config.yaml").read_text()) in html
    assert escape(json.dumps(json.loads((alpha / "plan.json").read_text()), indent=2)) in html
    # self-contained: every resource is a data URI; no URL, script or external stylesheet
    resources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert len(resources) == len(list((alpha / "report").glob("*.png"))) == 7  # 6 curves + the plan
    assert all(r.startswith("data:image/png;base64,") for r in resources)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html


def test_every_numeric_series_is_drawn_rl_ones_too(runs, tmp_path):
    _, beta = runs
    out = tmp_path / "beta-report"
    html = write_report([beta], out).read_text()
    for key in ("reward/mean", "kl/ref_per_token", "response/length_mean", "train/grad_norm"):
        png = out / (key.replace("/", "-") + ".png")
        _valid_png(png)
        assert key in html
    series = read_run(beta).series
    logged = [r["reward/mean"] for r in read_metrics(beta / "metrics.jsonl") if "reward/mean" in r]
    assert [v for _, v in series["reward/mean"]] == logged


def test_two_runs_are_overlaid_one_line_per_run(runs, tmp_path):
    alpha, beta = runs
    fig = curve_figure([read_run(alpha), read_run(beta)], "train/loss")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [alpha.name, beta.name]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == pytest.approx([4.0, 5.0])
    # a series only one run logged: one line, still labelled with its run
    kl = curve_figure([read_run(alpha), read_run(beta)], "kl/ref_per_token").axes[0]
    assert [t.get_text() for t in kl.get_legend().get_texts()] == [beta.name]

    index = write_report([alpha, beta], tmp_path / "compare")
    html = index.read_text()
    assert alpha.name in html and beta.name in html
    assert "2 runs compared" in html
    _valid_png(tmp_path / "compare" / "train-loss.png")
    assert (tmp_path / "compare" / "plan-memory-2.png").exists()
    with pytest.raises(UserError, match="-o"):
        write_report([alpha, beta])  # several runs: the page needs a place of its own
    same = write_report([alpha, alpha.parent / ".." / alpha.parent.name / alpha.name], tmp_path / "same")
    assert f"<title>ftl report: {alpha.name}</title>" in same.read_text()  # one run named twice


def test_plan_chart_stacks_terms_under_the_gpu_capacity(runs):
    plan = json.loads((runs[0] / "plan.json").read_text())
    memory = plan["memory"]
    ax = plan_figure(plan).axes[0]
    capacity = [line for line in ax.get_lines() if "GPU capacity" in line.get_label()]
    assert len(capacity) == 1 and capacity[0].get_ydata()[0] == pytest.approx(80.0)  # resources default

    def top(bar: int) -> float:  # the height of the stack at x = bar
        return max(p.get_y() + p.get_height() for p in ax.patches
                   if abs(p.get_x() + p.get_width() / 2 - bar) < 1e-9)

    assert top(0) == pytest.approx(memory["roles"]["policy"]["total_gpu_bytes"] / GB)  # terms stacked
    assert top(1) == pytest.approx(memory["per_gpu"]["total_bytes"] / GB)  # + the CUDA/NCCL reserve


def test_plan_chart_of_a_cpu_run_has_no_gpu_line():
    from launcher.config.load import validate_config
    from launcher.plan.planner import make_plan
    from tests.helpers.ftl import tiny_config

    plan = make_plan(validate_config(tiny_config()))  # 2 CPU workers, no GPU
    ax = plan_figure(plan).axes[0]
    assert not [line for line in ax.get_lines() if "GPU capacity" in line.get_label()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["policy"]
    assert "host RAM" in ax.get_title()
    assert max(p.get_y() + p.get_height() for p in ax.patches) == pytest.approx(
        plan["memory"]["roles"]["policy"]["total_gpu_bytes"] / GB)


def test_sparkline_follows_the_series(runs):
    falling = sparkline([4.0, 3.0, 2.0, 1.5, 1.0, 0.5])
    assert BLOCKS.index(falling[0]) > BLOCKS.index(falling[-1])
    assert falling[0] == BLOCKS[-1] and falling[-1] == BLOCKS[0]
    rising = sparkline(list(range(100)))
    assert len(rising) == 16 and list(rising) == sorted(rising) and rising[0] != rising[-1]
    assert len(set(sparkline([2.0] * 10))) == 1 and sparkline([]) == ""

    from launcher.run.listing import describe_runs

    rows = {Path(r["run"]).name: r for r in describe_runs(str(runs[0].parent))}
    line = rows[runs[0].name]["loss_curve"]
    assert line == sparkline(loss_values(read_metrics(runs[0] / "metrics.jsonl")))
    assert len(line) == 16 and BLOCKS.index(line[0]) > BLOCKS.index(line[-1])  # 20 falling losses


def test_run_names_resolve_like_ftl_list_shows_them(runs):
    alpha, beta = runs
    parent = alpha.parent
    assert resolve_run(str(alpha), parent) == alpha
    assert resolve_run(alpha.name, parent) == alpha
    assert resolve_run("beta", parent) == beta  # the unique start of a name
    with pytest.raises(UserError, match="did you mean") as err:
        resolve_run(alpha.name.replace("alpha", "alpah"), parent)
    assert alpha.name in str(err.value)


def test_a_report_that_cannot_be_written_is_a_warning(runs, tmp_path, caplog):
    import shutil

    run = tmp_path / runs[0].name
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("report"))
    (run / "report").write_text("a file where the report folder goes")
    with caplog.at_level(logging.WARNING, logger="ftl.report"):
        assert write_run_report_safely(run) is None
    assert "no report written" in caplog.text and str(run) in caplog.text


def test_the_cli_and_ftl_list_do_not_import_matplotlib():
    import subprocess
    import sys

    code = ("import sys, launcher.cli, launcher.run.listing, launcher.report.series, launcher.report.build; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
