"""Open a local HTML file in headless Chromium as a user would, over the DevTools protocol.

Returns what a reviewer checks by eye: console errors and uncaught exceptions, every network
request that is not the file itself (``data:`` URLs are inline, not requests), the visible
images (decoded, non-empty) and tables, and a screenshot.

Chromium is Debian's ``chromium``; :func:`ensure_chromium` installs it with apt-get when it is
missing (the test machines run as root), and says why when it cannot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio",
                  "--remote-debugging-port=0", "--window-size=1400,2000"]


def ensure_chromium() -> tuple[str | None, str]:
    """The chromium binary, installing Debian's package when missing; (None, why) otherwise."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name), ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and apt-get cannot run here (not root / no apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        if shutil.which("chromium"):
            return shutil.which("chromium"), ""
    return None, "apt-get install chromium failed (no package source reachable?)"


@dataclass
class PageVisit:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: int = 0
    tables: int = 0
    screenshot: bytes = b""
    title: str = ""
    text: str = ""


class _Cdp:
    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=20)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.events.append(json.loads(self.ws.recv(timeout=remaining)))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=remaining)))
            except TimeoutError:
                return


def _devtools_url(profile: Path, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists():
            lines = marker.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def visit(chromium: str, page: Path) -> PageVisit:
    """Load ``page`` (file://) in a fresh profile; collect errors, requests, visible figures."""
    page = Path(page).resolve()
    url = page.as_uri()
    out = PageVisit()
    # Chromium's helper processes may still write into the profile after the browser exits:
    # its removal must not fail the visit.
    with tempfile.TemporaryDirectory(prefix="mmoe-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cdp = _Cdp(_devtools_url(Path(profile), proc))
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable", session)
            cdp.call("Page.navigate", session, url=url)
            cdp.wait_for("Page.loadEventFired", timeout=60)
            cdp.drain(1.0)  # late requests / errors
            probe = ("JSON.stringify({title: document.title, text: document.body.innerText,"
                     " images: [...document.images].filter(i => i.complete && i.naturalWidth > 0"
                     "   && i.getBoundingClientRect().height > 20).length,"
                     " tables: [...document.querySelectorAll('table')].filter(t =>"
                     "   t.getBoundingClientRect().height > 0 && t.rows.length > 0).length})")
            seen = json.loads(cdp.call("Runtime.evaluate", session, expression=probe,
                                       returnByValue=True)["result"]["value"])
            out.title, out.images, out.tables = seen["title"], seen["images"], seen["tables"]
            out.text = seen["text"]
            shot = cdp.call("Page.captureScreenshot", session, format="png", timeout=60)
            out.screenshot = base64.b64decode(shot["data"])
            cdp.drain(0.2)
            for e in cdp.events:
                method, params = e.get("method"), e.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    out.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in params.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    out.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    out.errors.append("log: " + params["entry"].get("text", ""))
                elif method == "Network.requestWillBeSent":
                    req = params["request"]["url"]
                    if req != url and not req.startswith("data:"):
                        out.requests.append(req)
                elif method == "Network.loadingFailed":
                    out.errors.append("failed load: " + params.get("errorText", ""))
            cdp.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out
