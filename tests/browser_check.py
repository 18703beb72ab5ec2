"""``make test-browser``: notebooks 01-03 as a student meets them -- JupyterLab in a real Chromium, Run All Cells.

Opt-in (not part of ``make test``): it needs Debian's ``chromium`` and PyPI's ``playwright`` (the Makefile target
installs both; playwright's own browser download is unreachable here, so it drives the system Chromium through
``executable_path``). Steps, per notebook:

1. copy notebooks 01-03 into ``runs/browser/work`` (the committed files are never opened);
2. start JupyterLab from this interpreter's environment on a free port with a random token, autosave off and
   windowing off (every cell stays in the page) through a private ``JUPYTERLAB_SETTINGS_DIR``; the smoke profile
   and a private artifact root (``runs/browser/runs``) reach the kernel through the environment;
3. open the notebook, wait for its kernel to go idle, click Run > Run All Cells, wait until every code cell has an
   execution count and the kernel is idle again;
4. fail on any error output, on a stderr box that reads like a failure, and on any browser console error; save a
   screenshot (``runs/browser/<notebook>.png``, the page scrolled to the first figure) and a JSON report.

Exit 0 when every notebook passed, 1 otherwise (the report says why).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_data_construction.ipynb", "02_index_building.ipynb", "03_reward_design.ipynb")
SETTINGS = {
    # nothing is written back to the copies while the browser works on them
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # every cell stays in the DOM, so the checks below see all outputs
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no "would you like to receive news" prompt over the notebook (and no network call for it)
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
ALARMING = ("Traceback", "Error", "error:", "Failed", "Warning", "not found")
"""A stderr box containing one of these reads like a failure to a student."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder: Path) -> None:
    for name, value in SETTINGS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def start_lab(work: Path, out: Path, port: int, token: str) -> subprocess.Popen:
    settings = out / "lab-settings"
    write_settings(settings)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(out / "lab-workspaces"),
        "STEPSEARCH_PROFILE": "smoke",
        "STEPSEARCH_OVERRIDES": json.dumps({"artifact_root": str(out / "runs")}),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # containers run as root
    log = open(out / "lab.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def api(base: str, token: str, path: str):
    with urllib.request.urlopen(f"{base}{path}?token={token}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(condition, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def kernels_idle(base: str, token: str) -> bool:
    kernels = api(base, token, "/api/kernels")
    return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)


# the page's state, read in the browser: execution prompts, error outputs, stderr boxes, figures
PAGE_STATE = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
  const text = sel => [...document.querySelectorAll(sel)].map(e => e.textContent.trim());
  return {
    prompts,
    errors: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'),
    stderr: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
    images: document.querySelectorAll('.jp-OutputArea-output img').length,
    widgets: document.querySelectorAll('.jp-OutputArea-output .widget-progress, .jupyter-widgets').length,
  };
}"""


SHOW_FIRST_FIGURE = """() => {
  const shown = [...document.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.offsetHeight > 0);
  if (shown.length) shown[0].scrollIntoView({block: 'center'});
}"""


def run_notebook(page, base: str, token: str, name: str, out: Path, timeout: float) -> dict:
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: console.append(f"page error: {err}"))
    t0 = time.monotonic()
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")  # a fresh workspace each
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
    wait_for(lambda: kernels_idle(base, token), 120, f"{name}: kernel start")
    page.click('.lm-MenuBar-item:has-text("Run")')
    page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
    time.sleep(2)  # the first cells are queued before the prompts and the kernel report it

    def finished():
        state = page.evaluate(PAGE_STATE)
        done = all(p not in ("[ ]:", "[*]:", "[]:") for p in state["prompts"]) and kernels_idle(base, token)
        return state if done else None

    state = wait_for(finished, timeout, f"{name}: Run All Cells", poll=2.0)
    seconds = time.monotonic() - t0
    page.evaluate(SHOW_FIRST_FIGURE)
    shot = out / f"{Path(name).stem}.png"
    page.screenshot(path=str(shot))
    alarming = [s.splitlines()[0][:200] for s in state["stderr"] if any(a in s for a in ALARMING)]
    problems = [f"error output: {e.splitlines()[0][:200]}" for e in state["errors"]]
    problems += [f"alarming stderr: {s}" for s in alarming] + [f"console error: {c[:200]}" for c in console]
    return {
        "notebook": name,
        "seconds": round(seconds, 1),
        "code_cells": len(state["prompts"]),
        "images": state["images"],
        "widgets": state["widgets"],
        "stderr_boxes": len(state["stderr"]),
        "problems": problems,
        "screenshot": str(shot.relative_to(ROOT)) if shot.is_relative_to(ROOT) else str(shot),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "browser", help="screenshots, report, lab log")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "", help="the browser executable")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per notebook for Run All Cells")
    args = ap.parse_args(argv)
    if not args.chromium:
        print("error: no chromium on PATH; `apt-get install chromium` (make test-browser does it)", file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright  # heavy, and only this opt-in check needs it
    except ImportError:
        print("error: playwright is not installed; `pip install -e '.[browser]'` (make test-browser does it)",
              file=sys.stderr)  # fmt: skip
        return 2
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copyfile(ROOT / "notebooks" / name, work / name)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    lab = start_lab(work, out, port, token)
    report = []
    try:
        wait_for(lambda: api(base, token, "/api/status"), 120, "JupyterLab start")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            for name in NOTEBOOKS:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                report.append(run_notebook(page, base, token, name, out, args.timeout))
                page.close()
                for k in api(base, token, "/api/kernels"):  # one kernel at a time on 2 cores
                    req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE")
                    urllib.request.urlopen(req, timeout=10)
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    for r in report:
        status = "ok" if not r["problems"] else "FAILED"
        print(f"[browser] {r['notebook']}: {status} in {r['seconds']:.0f} s, {r['code_cells']} code cells, "
              f"{r['images']} figures, {r['widgets']} widgets, {r['stderr_boxes']} stderr boxes -> {r['screenshot']}")  # fmt: skip
        for p in r["problems"]:
            print(f"           {p}")
    return 0 if report and all(not r["problems"] for r in report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
