"""What the browser test modules share: Debian's Chromium driven by Playwright,
the fakes' labels, and the page helpers.

The app servers are session fixtures (tests/conftest.py: ``browser_app``,
``bulk_app``), so that two ``python app.py`` serve every browser module (and
``browser``, one Chromium per module):

- ``browser_app``: Neuronpedia answers one feature at a time (:func:`label_of`:
  a fifth of the labels hostile), as in a session whose labels are not cached;
- ``bulk_app``: the same labels, a few named for the search tests
  (:data:`BULK_NAMES`), also downloadable in bulk (the app fetches them all at
  start-up, so search finds them locally), each feature with evidence (top
  examples, logit lens, density).

Without Chromium or Playwright these tests skip, saying why; but where a browser
is required (CI sets CI=true; or AXON_REQUIRE_BROWSER=1) every one of them
fails instead (:func:`require_browser`, called by each of those fixtures), since
they are the only coverage of assets/*.js and of the page's own behaviour.
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_REQUIRED = (os.environ.get("AXON_REQUIRE_BROWSER") == "1"
                    or os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"))


def _browser_missing() -> str | None:
    if CHROMIUM is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError as err:
        return f"playwright (Python) is not installed ({err})"
    return None


BROWSER_MISSING = _browser_missing()
if BROWSER_MISSING:
    sync_api = None
    if not BROWSER_REQUIRED:
        warnings.warn(f"browser tests skipped: {BROWSER_MISSING}", pytest.PytestWarning)
else:
    from playwright import sync_api


def require_browser() -> None:
    """Skip the calling test (or, where a browser is required, fail it) without a browser."""
    if BROWSER_MISSING and BROWSER_REQUIRED:
        pytest.fail(f"a browser is required here (CI or AXON_REQUIRE_BROWSER=1) but {BROWSER_MISSING}",
                    pytrace=False)
    if BROWSER_MISSING:
        pytest.skip(f"browser tests skipped: {BROWSER_MISSING}")


NP_ID = "gpt2-small/8-res-jb"
XSS = "<img src=x onerror=window.__xss=1>"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LONG = 120_000  # ms: a wait that covers a cold WebGL start on a busy CPU
# busy: Gradio's progress classes, or a run streaming (the status line's data-state)
BUSY = "document.querySelectorAll('.generating, .pending, #axon-status [data-state=running]').length"
STATUS = "document.querySelector('#axon-status').innerText"
SCRUB = "Show the graph at token (drag; the end follows the run)"
# The app servers: a high client-side rate cap (the fake answers at once, and the labels
# of a run should be known by its last frame); one torch thread (the browser, with
# software WebGL, shares this machine's cores).
APP_ENV = {"AXON_NEURONPEDIA_RATE": "500", "AXON_TORCH_THREADS": "1"}

# bulk_app's search targets: test_watch_browser finds 7 by "Fran", test_evidence_browser 1000 by "zebra"
WATCHED, ZEBRA = 7, 1000
BULK_NAMES = {WATCHED: "France and its capital city", ZEBRA: "zebra crossings"}


def label_of(index: int) -> str:
    """The label the fakes give feature ``index`` of :data:`NP_ID` (bulk_app: :func:`bulk_label_of`)."""
    return XSS if index % 5 == 0 else f"concept {index}"


def bulk_label_of(index: int) -> str:
    return BULK_NAMES.get(index) or label_of(index)


# bulk_app's evidence for every feature: a top example whose max token is hostile text
EXAMPLE = [" The", " capital", " of", " France", XSS, " is", " Paris"]
EVIDENCE = {"activations": [{"tokens": EXAMPLE, "values": [0, 0.5, 0, 2.0, 4.0, 0, 1.0], "maxValue": 4.0,
                             "maxValueTokenIndex": 4}],
            "pos_str": [XSS, " Paris"], "pos_values": [1.5, 1.0], "neg_str": [" the"], "neg_values": [-1.0],
            "frac_nonzero": 0.002, "maxActApprox": 6.5}


class Watched:
    """A page of ``browser`` at ``url`` with its dialogs and uncaught errors recorded
    (``wait``: a JS expression to wait for once the page is open)."""

    def __init__(self, browser, url: str, viewport: tuple[int, int] = (1400, 1000),
                 wait: str | None = "window.Plotly && window.__axonFrames !== undefined", **context):
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(LONG)
        self.dialogs: list[str] = []
        self.tables: list[list[list[str]]] = []  # the features table after each run (tests/test_browser.py)
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        try:
            self.page.goto(url)
            if wait:
                self.page.wait_for_function(wait)
        except BaseException:
            self.close()  # a page left open would go on drawing for the rest of the session
            raise

    def settled(self, prompt: str) -> None:
        """Wait until the link's values are in the inputs (demo.load fills them from the
        query; what is typed or clicked before could be overwritten) and nothing is busy."""
        self.page.wait_for_function(f"document.querySelector('textarea')?.value === {prompt!r}")
        self.page.wait_for_function(f"{BUSY} === 0")

    def clean(self) -> bool:
        """No hostile label ran, no dialog opened, no uncaught error."""
        return self.page.evaluate("typeof window.__xss") == "undefined" and not self.dialogs and not self.errors

    def close(self):
        self.context.close()

    def __enter__(self) -> "Watched":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
