"""Load an HTML page in headless chromium and report which images and audio elements loaded.

    result = check_page(Path("run/index.html"))      # pytest.skip when no chromium is installed
    assert not result.failed, result.failed

The page's folder is served by a stdlib HTTP server on 127.0.0.1 (so the page loads its files
as it would from a web server, and same-origin rules hold), together with a harness page kept
in memory. The harness loads the page in a same-origin iframe, waits until every <img> is
complete and every <audio> has its metadata or has given up, and writes what it found into its
own DOM, which chromium prints with --dump-dom. Stdlib only; chromium runs with
--virtual-time-budget, so waiting costs no wall time once the files are served.

An image counts as loaded when it is complete with a natural width > 0 (a missing or broken
file is complete with width 0); an audio element when its readyState reached HAVE_METADATA (the
browser decoded its header), and failed when it reports an error, on itself or its last <source>.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HARNESS = "__specmae_page_check__.html"

_HARNESS_PAGE = """<!doctype html>
<html><body>
<pre id="result">pending</pre>
<iframe id="page" style="width:1600px;height:1200px" src="%(page)s"></iframe>
<script>
const LIMIT_MS = %(limit_ms)d;
const frame = document.getElementById("page");
function report(value) { document.getElementById("result").textContent = JSON.stringify(value); }
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  if (!doc) { report({error: "the page's document is not readable"}); return; }
  const images = Array.from(doc.images);
  const audio = Array.from(doc.querySelectorAll("audio"));
  // Lazy images below the fold and audio with preload="none" would never load by themselves.
  // Each audio element is reloaded with listeners attached: loadedmetadata means it decoded its
  // header; an error on the element, or on its last <source> (errors on <source> children do not
  // bubble, so they are caught while capturing), means it gave up.
  images.forEach(img => { img.loading = "eager"; });
  const status = new Map();
  audio.forEach(a => {
    a.addEventListener("loadedmetadata", () => status.set(a, "ok"));
    a.addEventListener("error", event => {
      const sources = a.querySelectorAll("source");
      if (event.target === a || event.target === sources[sources.length - 1]) status.set(a, "failed");
    }, true);
    a.preload = "auto";
    a.load();
  });
  const started = Date.now();
  const audioDone = a => status.has(a) || a.readyState >= 1;
  function poll() {
    const pending = images.some(i => !i.complete) || audio.some(a => !audioDone(a));
    if (pending && Date.now() - started < LIMIT_MS) { setTimeout(poll, 50); return; }
    report({
      title: doc.title,
      images: images.map(i => ({src: i.getAttribute("src") || "", ok: i.complete && i.naturalWidth > 0,
                                detail: i.complete ? i.naturalWidth + "x" + i.naturalHeight : "still loading"})),
      audio: audio.map(a => {
        const source = a.getAttribute("src") || (a.querySelector("source") || {getAttribute: () => ""}).getAttribute("src") || "";
        const ok = a.readyState >= 1 && status.get(a) !== "failed";
        const detail = ok ? "duration " + a.duration.toFixed(3) + " s"
          : a.error ? "error code " + a.error.code : status.get(a) === "failed" ? "no usable source" : "still loading";
        return {src: source, ok: ok, detail: detail};
      }),
    });
  }
  poll();
});
</script>
</body></html>
"""


@dataclass
class Element:
    src: str        # the src attribute as written in the page (an audio element's first <source>'s)
    ok: bool
    detail: str     # "640x480", "duration 2.000 s", "error code 4", "no usable source", ...


@dataclass
class PageCheck:
    page: Path
    title: str = ""
    images: list[Element] = field(default_factory=list)
    audio: list[Element] = field(default_factory=list)

    @property
    def failed(self) -> list[Element]:
        """Every image and audio element that did not load."""
        return [e for e in self.images + self.audio if not e.ok]


def find_chromium() -> str | None:
    """The chromium (or chrome) binary: $SPECMAE_CHROMIUM, else the first of BROWSERS on PATH."""
    explicit = os.environ.get("SPECMAE_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def require_chromium() -> str:
    """The chromium binary, or pytest.skip when there is none."""
    import pytest

    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} on PATH (apt-get install chromium)")
    return binary


class _Handler(SimpleHTTPRequestHandler):
    """Serves the page's folder, plus the harness page from memory at /HARNESS."""

    harness = b""

    def do_GET(self):
        if self.path.split("?")[0] == "/" + HARNESS:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.harness)))
            self.end_headers()
            self.wfile.write(self.harness)
            return
        super().do_GET()

    def log_message(self, *args):  # quiet: the check reports what failed
        pass


def check_page(page: str | os.PathLike, timeout: float = 60.0, wait_ms: int = 20_000,
               browser: str | None = None) -> PageCheck:
    """Load `page` (an HTML file) in headless chromium -> which <img> and <audio> elements loaded.

    pytest.skip when no browser is found (`browser` overrides the search). RuntimeError when
    chromium fails or the harness reports nothing within `timeout` seconds of wall time;
    `wait_ms` is the virtual time the harness gives the elements to load.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page")
    binary = browser or require_chromium()
    harness = _HARNESS_PAGE % dict(page=html.escape(urllib.parse.quote(page.name)), limit_ms=wait_ms)
    handler = type("Handler", (_Handler,), dict(harness=harness.encode()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(page.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="specmae-chromium-") as profile:
            url = f"http://127.0.0.1:{server.server_address[1]}/{HARNESS}"
            cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--mute-audio",
                   "--disable-dev-shm-usage", "--disable-extensions", f"--user-data-dir={profile}",
                   f"--virtual-time-budget={wait_ms + 5_000}", "--dump-dom", url]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"{binary}: no answer within {timeout} s loading {page}") from e
    finally:
        server.shutdown()
        server.server_close()
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode or not match or match.group(1) == "pending":
        raise RuntimeError(f"{binary} exit {proc.returncode} loading {page}: harness result "
                           f"{match.group(1)[:200] if match else 'missing'}; stderr: {proc.stderr[-1500:]}")
    found = json.loads(html.unescape(match.group(1)))
    if "error" in found:
        raise RuntimeError(f"{page}: {found['error']}")
    return PageCheck(page, found.get("title", ""), [Element(**e) for e in found["images"]],
                     [Element(**e) for e in found["audio"]])
