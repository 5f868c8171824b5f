"""Page reruns with many runs on disk: the Runs, Results and Predict pages and list_runs, in one temporary workspace.

One real run is trained (resnet18, random weights, 32 px, 10 epochs, one thread: a few seconds), then copied into
N run folders (default 1000) with ids of their own; the weights are hard links, so the copies cost no disk. A few
copies are stopped or failed, as on a real disk. Each page opens through app.py as the tests open it, runs once to
warm up, then one more rerun is timed. list_runs is timed cold (a fresh process cache: what a server start pays)
and warm (nothing on disk changed). Prints a table and one line of JSON with runs_page_s, results_page_s,
predict_page_s, list_runs_cold_s and list_runs_warm_s. The aim: every page rerun under a second with 1,000 runs.

    python bench/runs_page.py [--runs 1000]

bench/speed.py calls page_rerun_seconds(n_runs) for the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = {"runs_page_s": "views/runs.py", "results_page_s": "views/results.py", "predict_page_s": "views/predict.py"}
TITLES = {"runs_page_s": "Runs", "results_page_s": "Results", "predict_page_s": "Predict"}
SHARED = {"model.safetensors"}  # hard links: a thousand copies of the weights would fill the disk
SKIPPED = {"checkpoint.pt"}  # what resuming reads; no page does


def train_one(home: Path, epochs: int = 10) -> Path:
    """A real finished run with every file the pages read, trained on tiny generated images."""
    import numpy as np
    from PIL import Image

    from core.config import RunConfig
    from core.train.engine import fit

    data = home / "data"
    for c, colour in enumerate([(220, 40, 40), (40, 60, 220), (40, 200, 60)]):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(8):
            rng = np.random.default_rng(c * 100 + i)
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(data / f"class{c}" / f"{i}.png")
    config = RunConfig()
    config.data.source, config.data.val_ratio, config.data.test_ratio = str(data), 0.25, 0.25
    config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", "full"
    config.augment.image_size, config.optim.epochs, config.optim.batch_size, config.threads = 32, epochs, 8, 1
    run_dir = home / "template"
    result = fit(config, run_dir)
    if result.status != "finished":
        raise RuntimeError(f"the template run ended {result.status}")
    return run_dir


def make_runs(template: Path, runs_root: Path, n: int) -> list[str]:
    """n copies of the template, newest first, one in 50 stopped and one in 97 failed, their files dated as their
    ids say (a run ten minutes apart from the next, as on a disk used for a while); their ids."""
    from core import runs

    runs_root.mkdir(parents=True, exist_ok=True)
    start = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
    ids = []
    for i in range(n):
        started = start + 600 * i
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{i:06x}"
        run_dir = runs_root / run_id
        run_dir.mkdir()
        for path in template.iterdir():
            if path.name in SHARED:
                os.link(path, run_dir / path.name)
            elif path.is_file() and path.name not in SKIPPED:
                shutil.copy(path, run_dir / path.name)
        if i % 50 == 49:
            runs.write_status(run_dir, "stopped", "Stopped by you.", best_epoch=5)
        elif i % 97 == 96:
            runs.write_status(run_dir, "failed", "Out of memory.", best_epoch=3)
        for path in run_dir.iterdir():
            os.utime(path, (started + 300, started + 300))
        ids.append(run_id)
    return sorted(ids, reverse=True)


def open_page(page: str, run_id: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page(page).run()
    if at.exception:
        raise RuntimeError(f"{page} failed: {at.exception}")
    return at


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(home: Path, n_runs: int) -> dict[str, float]:
    import streamlit as st
    import streamlit.logger

    from core import runs
    from core.config import workspace_root

    streamlit.logger.set_log_level("ERROR")
    root = workspace_root() / "runs"
    ids = make_runs(train_one(home), root, n_runs)
    figures = {"list_runs_cold_s": timed(lambda: runs.list_runs(root))}  # a root this process never listed
    figures["list_runs_warm_s"] = timed(lambda: runs.list_runs(root))
    st.cache_resource.clear()  # a registry of this workspace, as a fresh server has
    for name, page in PAGES.items():
        at = open_page(page, ids[0])
        streamlit.logger.set_log_level("ERROR")  # again once AppTest has read its config: its bare-mode notes
        at.run()  # the first rerun pays one-off work (imports, the model load) that every later one is spared
        figures[name] = timed(at.run)
        if at.exception or at.title[0].value != TITLES[name]:
            raise RuntimeError(f"{page} failed on a rerun: {at.exception or at.title[0].value}")
    st.cache_resource.clear()  # no registry of a workspace about to be removed is left to a later bench
    return figures


def page_rerun_seconds(n_runs: int = 1000) -> dict[str, float]:
    """Seconds of one warm rerun of each page, and of list_runs cold and warm, with n_runs runs on disk; the
    workspace is temporary (FTLAB_HOME, put back afterwards) and removed."""
    before = os.environ.get("FTLAB_HOME")
    home = Path(tempfile.mkdtemp(prefix="ftlab-bench-runs-page-"))
    os.environ["FTLAB_HOME"] = str(home / "workspace")  # before core is imported: nothing of the real workspace
    try:
        return measure(home, n_runs)
    finally:
        if before is None:
            os.environ.pop("FTLAB_HOME", None)
        else:
            os.environ["FTLAB_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="run folders on disk")
    args = parser.parse_args()
    figures = page_rerun_seconds(args.runs)
    print(f"{args.runs} runs on disk")
    print(f"{'':<18}{'seconds':>9}")
    for name, seconds in figures.items():
        print(f"{name:<18}{seconds:>9.3f}")
    print("target: every page rerun under 1 s: " + ("met" if all(figures[k] < 1 for k in PAGES) else "NOT met"))
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
