"""Screenshots of the console's main pages into docs/console/*.png (refresh after UI changes).

    python3 docs/screenshots.py          # from the repository root

Starts a throwaway ``ebscrypt serve`` on a free loopback port, builds the scenario of
tests/console/scenario.py through boto3, signs in as the builder account in the system
Chromium (Playwright's Python package, ``executable_path=/usr/bin/chromium``; no browser
download) and saves one PNG per page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402
from tests.console.scenario import build  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
OUT = ROOT / "docs" / "console"


def main() -> int:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(tmp) / "data").start()
        try:
            s = build(srv.client, "444444444401", "444444444402")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                page.goto(f"{srv.url}/_console/login")
                page.screenshot(path=str(OUT / "login.png"))
                page.fill("#account", s.a)
                page.click("button[type=submit]")
                shots = {
                    "overview": "/_console/",
                    "volumes": "/_console/list/volumes",
                    "image": f"/_console/r/{s.image}",
                    "key-dependants": f"/_console/key/{s.key_a}",
                    "key-pending-deletion": f"/_console/key/{s.doomed_key}",
                    "audit": f"/_console/audit?key={s.key_a}",
                }
                for name, path in shots.items():
                    page.goto(srv.url + path)
                    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                page.context.clear_cookies()
                page.goto(f"{srv.url}/_console/login")
                page.fill("#account", s.b)
                page.click("button[type=submit]")
                page.goto(f"{srv.url}/_console/r/{s.copy_snapshot}")
                page.screenshot(path=str(OUT / "cross-account-copy.png"), full_page=True)
                browser.close()
        finally:
            srv.stop()
    for png in sorted(OUT.glob("*.png")):
        print(png.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
