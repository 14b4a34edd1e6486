"""A small driver of headless Chromium (Debian's ``chromium``) over the DevTools protocol, for the browser tests.

Chromium is started with ``--remote-debugging-pipe``: the protocol's JSON messages travel over the file
descriptors 3 (to the browser) and 4 (from it), each message ended by a NUL byte, so no port, websocket or
extra package is needed. One page target is opened; every event it sends while a page loads is kept, so a test
can look at console messages, exceptions, dialogs (``alert``) and every network request.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the probe's flags: nothing in the background that could reach the network
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars")


def chromium_path() -> str | None:
    """The Chromium executable (Debian's package installs /usr/bin/chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Load:
    """What happened while one page loaded."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e.get("method") == method]

    @property
    def requests(self) -> list[str]:
        return [p["request"]["url"] for p in self.of("Network.requestWillBeSent")]

    @property
    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (each as one line)."""
        lines = [f"log {p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
                 for p in self.of("Log.entryAdded") if p["entry"].get("level") == "error"]
        lines += [f"console.{p['type']}: {p.get('args')}" for p in self.of("Runtime.consoleAPICalled")
                  if p.get("type") in ("error", "assert")]
        lines += [f"exception: {p['exceptionDetails'].get('text')}" for p in self.of("Runtime.exceptionThrown")]
        lines += [f"failed load: {p.get('errorText')} {p.get('blockedReason', '')}"
                  for p in self.of("Network.loadingFailed")]
        return lines

    @property
    def dialogs(self) -> list[str]:
        """Messages of alert/confirm/prompt dialogs a script opened."""
        return [p.get("message", "") for p in self.of("Page.javascriptDialogOpening")]


class Chromium:
    """Headless Chromium with one page. Use as a context manager; `open` loads a URL and returns a `Load`."""

    def __init__(self, *, width: int = 1280, height: int = 1600, timeout: float = 30.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="miner-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # the browser reads commands on fd 3 and writes answers on fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._pending: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    # -- protocol ----------------------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        """Send one command and wait for its answer (events that arrive meanwhile are kept for `open`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(self.timeout)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._pending.append(answer)

    # -- pages -------------------------------------------------------------------------------------------
    def open(self, url: str, *, settle: float = 0.5, bypass_csp: bool = False) -> Load:
        """Load `url`, wait for its load event and `settle` seconds of quiet, and return what happened."""
        self.call("Page.setBypassCSP", {"enabled": bypass_csp}, session=True)
        self._pending.clear()
        load = Load(url)
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + self.timeout
        loaded = False
        while True:
            while self._pending:
                event = self._pending.pop(0)
                load.events.append(event)
                if event.get("method") == "Page.loadEventFired":
                    loaded = True
                if event.get("method") == "Page.javascriptDialogOpening":  # never leave a dialog blocking the page
                    self.call("Page.handleJavaScriptDialog", {"accept": True}, session=True)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            try:
                self._pending.append(self._read(settle if loaded else self.timeout))
            except TimeoutError:
                if loaded:
                    return load
                raise

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (evaluated by DevTools, not by the page)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: str | Path, *, full_page: bool = False) -> Path:
        """A PNG of the page (the viewport, or the whole page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the browser and its helpers are the session this driver started
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
