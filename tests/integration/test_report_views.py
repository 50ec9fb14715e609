"""What a person looks at: ``ftl report`` and ``ftl plan --png`` through the real Click
commands, and the report page rendered by a real headless Chromium with the network blocked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from tests.helpers.ftl import tiny_config, write_config
from tests.helpers.report_runs import make_run

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # the first two runs' colours (tab10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    parent = tmp_path_factory.mktemp("runs")
    return make_run(parent, "alpha"), make_run(parent, "beta", start=5.0, end=1.0, rl=True)


def test_ftl_report_overlays_two_runs_named_as_ftl_list_shows_them(runs, tmp_path):
    alpha, beta = runs
    out = tmp_path / "compare"
    result = CliRunner().invoke(cli, ["report", alpha.name, beta.name, "-o", str(out),
                                      "--runs-dir", str(alpha.parent)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"report: {out / 'index.html'}"
    html = (out / "index.html").read_text()
    for run in (alpha, beta):
        final = json.loads((run / "summary.json").read_text())["final"]["eval/loss"]
        assert run.name in html and f"{final:.4f}" in html
    assert (out / "reward-mean.png").read_bytes().startswith(b"\x89PNG")

    missing = CliRunner().invoke(cli, ["report", "no-such-run", "--runs-dir", str(alpha.parent)])
    assert missing.exit_code == 2 and "no such run" in missing.output and "Traceback" not in missing.output


def test_ftl_plan_png_draws_memory_against_the_gpu(tmp_path):
    from matplotlib.image import imread

    cfg = tiny_config(resources={"num_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1,
                                 "gpu_memory_gb": 24})
    png = tmp_path / "plan.png"
    result = CliRunner().invoke(cli, ["plan", str(write_config(tmp_path, cfg)), "--png", str(png), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)  # --json stays clean: the chart's path goes to stderr
    assert plan["memory"]["per_gpu"]["limit_bytes"] == 24 * 10**9
    assert f"memory chart: {png}" in result.stderr
    image = imread(png)
    assert image.shape[0] > 300 and len({tuple(p) for p in image.reshape(-1, image.shape[-1])}) > 50


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-headless-shell")),
                    reason="chromium is not installed (scripts/test.sh installs Debian's `chromium` "
                           "with apt when it runs as root)")
def test_report_page_renders_in_headless_chromium_offline(runs, tmp_path):
    from PIL import Image

    from launcher.report.build import write_report

    index = write_report(list(runs), tmp_path / "compare")
    shot = tmp_path / "shot.png"
    browser = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    # every host name resolves to nothing: the page must render from its own bytes
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--host-resolver-rules=MAP * ~NOTFOUND", f"--screenshot={shot}",
                           "--window-size=1280,1600", index.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    colours = {colour: n for n, colour in image.getcolors(maxcolors=1280 * 1600)}
    total = 1280 * 1600
    assert len(colours) > 2000  # anti-aliased curves: a page whose images broke has ~500
    assert max(colours.values()) < 0.9 * total

    def near(target):
        return sum(n for c, n in colours.items() if sum(abs(a - b) for a, b in zip(c, target)) < 40)

    # the curves' lines drew: several times the pixels of the legend swatches (2 x 144)
    assert near(TAB_BLUE) > 600 and near(TAB_ORANGE) > 600, (near(TAB_BLUE), near(TAB_ORANGE))
