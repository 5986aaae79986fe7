"""The web page in a real browser (headless Chromium via WebDriver).

Starts `imgproc-local serve` on a free loopback port with a fresh data
folder and an API token, serves the example photographs from another
loopback port, and uses the page as a person would: a bad CSV shows its
problems by line; the example CSV is uploaded, followed to the end, its
thumbnails load, one image is compared at full size by keyboard, and the
output CSV downloads. A screenshot of the request view is written to
artifacts/.

Run: scripts/test-browser.sh (which scripts/test.sh calls). Needs the
`imgproc-local` binary (IMGPROC_LOCAL_BIN, else $CARGO_TARGET_DIR/debug),
`chromium` and `chromedriver` on PATH, and the `selenium` package.
"""

import base64
import functools
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = pathlib.Path(__file__).resolve().parents[4]
PHOTOS = REPO / "examples" / "photos"
EXAMPLE_CSV = REPO / "examples" / "products.csv"
ARTIFACTS = pathlib.Path(os.environ.get("IMGPROC_ARTIFACTS", REPO / "artifacts"))
TOKEN = "browser-test-token"
# The example CSV names its images on this address; the test serves them elsewhere.
EXAMPLE_BASE = "http://127.0.0.1:8765/"
MISSING_ROW = "6,Discontinued Mug,{base}no-such-photo.jpg\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary():
    explicit = os.environ.get("IMGPROC_LOCAL_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "imgproc-local"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def wait_until(what, check, timeout):
    """Polls `check` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class PageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="imgproc-browser-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)

        # The example photographs on loopback.
        handler = functools.partial(QuietHandler, directory=str(PHOTOS))
        cls.photos = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=cls.photos.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.photos.shutdown)
        photo_base = f"http://127.0.0.1:{cls.photos.server_address[1]}/"

        # The bundled example, pointed at that server, plus one image that does not exist.
        csv = EXAMPLE_CSV.read_text(encoding="utf-8").replace(EXAMPLE_BASE, photo_base)
        cls.good_csv = cls.tmp / "products.csv"
        cls.good_csv.write_text(csv + MISSING_ROW.format(base=photo_base), encoding="utf-8")
        cls.bad_csv = cls.tmp / "bad.csv"
        cls.bad_csv.write_text(
            "S. No.,Product Name,Input Image Urls\n"
            "1,Espresso Cup,https://shop.example/a.jpg\n"
            "abc,Tea Pot,https://shop.example/b.jpg\n"
            "3,Milk Jug,ftp://shop.example/c.jpg\n",
            encoding="utf-8",
        )

        # The service. The network guard refuses loopback image URLs unless
        # told otherwise: the photos are served on loopback here.
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, ALLOW_PRIVATE_NETWORKS="true", API_TOKEN=TOKEN, RUST_LOG="warn")
        exe = binary()
        if not exe.is_file():
            raise AssertionError(f"{exe} is missing: build it with `cargo build -p imgproc-local`")
        cls.log = open(cls.tmp / "serve.log", "wb")
        cls.server = subprocess.Popen(
            # The output links must name this server, whatever PUBLIC_URL the
            # surrounding shell exports (the moto environment sets one).
            [
                str(exe), "serve", "--addr", f"127.0.0.1:{port}", "--public-url", cls.base,
                "--data-dir", str(cls.tmp / "data"), "--workers", "4",
            ],
            env=env,
            stdout=cls.log,
            stderr=subprocess.STDOUT,
        )
        cls.addClassCleanup(cls.stop_server)

        def healthy():
            if cls.server.poll() is not None:
                raise AssertionError(f"imgproc-local exited: {(cls.tmp / 'serve.log').read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(cls.base + "/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until("the server to answer /health", healthy, 30)

        # The browser: headless, nothing fetched from the internet, a fresh profile.
        cls.downloads = cls.tmp / "downloads"
        cls.downloads.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            f"--user-data-dir={cls.tmp / 'profile'}",
            "--window-size=1280,1000",
        ):
            options.add_argument(arg)
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(cls.downloads), "download.prompt_for_download": False}
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
        cls.driver = webdriver.Chrome(options=options, service=service)
        cls.addClassCleanup(cls.driver.quit)
        cls.driver.set_page_load_timeout(30)

    @classmethod
    def stop_server(cls):
        cls.server.terminate()
        try:
            cls.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.server.kill()
        cls.log.close()

    # ---- helpers ------------------------------------------------------------

    def wait(self, timeout=30):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1)

    def open_page(self):
        self.driver.get(self.base + "/")
        self.wait().until(EC.visibility_of_element_located((By.ID, "upload-form")))

    def upload(self, csv_path, token):
        d = self.driver
        d.find_element(By.ID, "csv-file").send_keys(str(csv_path))
        field = d.find_element(By.ID, "api-token")
        field.clear()
        if token:
            field.send_keys(token)
        d.find_element(By.ID, "submit-button").click()

    def console_problems(self, *expected):
        """Browser console errors since the last call, other than the
        expected ones and the image that is missing on purpose."""
        expected = ("no-such-photo.jpg",) + expected
        return [
            e["message"]
            for e in self.driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)
        ]

    # ---- tests --------------------------------------------------------------

    def test_1_page_needs_no_token_and_sends_strict_headers(self):
        with urllib.request.urlopen(self.base + "/", timeout=5) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Content-Type"], "text/html; charset=utf-8")
            self.assertIn("script-src 'self'", r.headers["Content-Security-Policy"])
        self.open_page()
        self.assertEqual(self.driver.find_element(By.TAG_NAME, "html").get_attribute("lang"), "en")
        # Every form control has a label a screen reader can announce.
        unlabelled = self.driver.execute_script(
            "return [...document.querySelectorAll('input, select, textarea')]"
            ".filter(i => i.type !== 'hidden' && i.labels.length === 0 && !i.getAttribute('aria-label'))"
            ".map(i => i.id || i.name);"
        )
        self.assertEqual(unlabelled, [])
        self.assertEqual(self.console_problems(), [])

    def test_2_a_bad_csv_shows_each_problem_with_its_line(self):
        self.open_page()
        self.upload(self.bad_csv, TOKEN)
        box = self.wait().until(EC.visibility_of_element_located((By.ID, "upload-errors")))
        self.assertEqual(self.driver.switch_to.active_element, box, "focus moves to the errors")
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in self.driver.find_elements(By.CSS_SELECTOR, "#upload-error-rows tr")
        ]
        lines = {r[0]: r for r in rows}
        self.assertIn("3", lines, rows)
        self.assertEqual(lines["3"][1], "S. No.")
        self.assertIn("abc", lines["3"][2])
        self.assertIn("4", lines, rows)
        self.assertEqual(lines["4"][1], "Input Image Urls")
        self.assertIn("ftp://shop.example/c.jpg", lines["4"][2])
        self.assertTrue(self.driver.find_element(By.ID, "upload-view").is_displayed())
        self.assertEqual(self.console_problems("/v1/requests - Failed to load resource: the server responded with a status of 400"), [])
        self.save_screenshot("upload-errors.png", full_page=True)

    def test_3_without_the_token_the_page_says_so(self):
        self.open_page()
        self.upload(self.good_csv, None)
        self.wait().until(EC.visibility_of_element_located((By.ID, "upload-errors")))
        self.assertIn("API token", self.driver.find_element(By.ID, "upload-error-message").text)
        self.assertEqual(self.driver.find_element(By.ID, "api-token").get_attribute("aria-invalid"), "true")
        self.assertEqual(self.console_problems("/v1/requests - Failed to load resource: the server responded with a status of 401"), [])

    def test_4_the_example_is_followed_to_the_end_with_thumbnails_and_a_comparison(self):
        d = self.driver
        self.open_page()
        self.upload(self.good_csv, TOKEN)
        self.wait().until(EC.url_matches(r"#/requests/[0-9a-f-]{36}$"))
        request_id = d.current_url.rsplit("/", 1)[1]
        state = self.wait(120).until(
            lambda d: (s := d.find_element(By.ID, "request-state").text) in ("completed", "completed with errors", "failed") and s
        )
        self.assertEqual(state, "completed with errors")
        bar = d.find_element(By.ID, "progress-bar")
        self.assertEqual(bar.get_attribute("value"), bar.get_attribute("max"))
        self.assertEqual(bar.get_attribute("max"), "10")
        self.assertIn("10 of 10 images done", d.find_element(By.ID, "progress-text").text)
        self.assertIn("9 succeeded · 1 failed", d.find_element(By.ID, "progress-text").text)

        # Six products, ten cards: nine pairs of thumbnails and one plain error.
        self.assertEqual(len(d.find_elements(By.CSS_SELECTOR, "#products .product")), 6)
        self.assertEqual(len(d.find_elements(By.CSS_SELECTOR, "#products .card.succeeded")), 9)
        failed = d.find_elements(By.CSS_SELECTOR, "#products .card.failed")
        self.assertEqual(len(failed), 1)
        self.assertIn("Failed:", failed[0].text)
        self.assertIn("http_status", failed[0].text)
        self.assertIn("404", failed[0].text)

        # Every thumbnail (input and output) decodes; lazy images are scrolled into view first.
        def thumbnails_loaded():
            return d.execute_script(
                "const imgs = [...document.querySelectorAll('#products .card.succeeded .thumb img')];"
                "imgs.forEach(i => i.scrollIntoView({block: 'nearest'}));"
                "return imgs.length === 18 && imgs.every(i => i.complete && i.naturalWidth > 0);"
            )

        wait_until("every thumbnail to load", thumbnails_loaded, 30)
        outputs = d.execute_script(
            "return [...document.querySelectorAll('#products .card.succeeded .thumb img')]"
            ".filter(i => i.alt.startsWith('Compressed')).map(i => i.src);"
        )
        self.assertEqual(len(outputs), 9)
        self.assertTrue(all(u.startswith(self.base + "/files/processed/" + request_id + "/") for u in outputs), outputs)

        # Sizes and savings per image, totals and time for the request.
        coffee = d.find_elements(By.CSS_SELECTOR, "#products .card.succeeded")[0]
        self.assertRegex(coffee.find_element(By.CLASS_NAME, "sizes").text, r"kB → .*kB −\d+\.\d%")
        self.assertRegex(d.find_element(By.ID, "sum-in").text, r"^\d+(\.\d)? (kB|MB)$")
        self.assertRegex(d.find_element(By.ID, "sum-saved").text, r"\(\d+\.\d%\)$")
        self.assertRegex(d.find_element(By.ID, "sum-time").text, r"^\d+(\.\d)? s$")

        # Compare one image at full size, by keyboard only.
        button = d.find_element(By.CSS_SELECTOR, "#products .card.succeeded .compare-open")
        d.execute_script("arguments[0].focus();", button)
        d.switch_to.active_element.send_keys(Keys.ENTER)
        dialog = self.wait().until(EC.visibility_of_element_located((By.ID, "compare")))
        self.assertEqual(d.switch_to.active_element.get_attribute("id"), "compare-slider")
        wait_until(
            "both comparison images to load",
            lambda: d.execute_script(
                "return ['compare-before', 'compare-after'].every(id => {"
                "const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; });"
            ),
            15,
        )
        d.switch_to.active_element.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        self.assertEqual(d.find_element(By.ID, "compare-slider").get_attribute("value"), "52")
        clip = d.execute_script("return document.getElementById('compare-after').style.clipPath;")
        self.assertEqual(clip, "inset(0px 0px 0px 52%)")
        self.save_screenshot("compare-dialog.png")
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        self.wait().until(EC.invisibility_of_element(dialog))

        # The output CSV downloads (a link to output_csv_url, which needs no token).
        d.find_element(By.ID, "download-csv").click()
        target = self.downloads / f"imgproc-{request_id}.csv"
        wait_until("the output CSV download", target.is_file, 15)
        lines = target.read_text(encoding="utf-8").splitlines()
        self.assertEqual(lines[0], "S. No.,Product Name,Input Image Urls,Output Image Urls")

        self.assertEqual(self.console_problems(), [])
        d.execute_script("window.scrollTo(0, 0);")
        self.save_screenshot("request-view.png", full_page=True)

        # A phone's width: nothing wider than the screen.
        d.set_window_size(390, 844)
        overflow = wait_until(
            "the layout to settle at phone width",
            lambda: d.execute_script("return window.innerWidth <= 420 && [document.documentElement.scrollWidth, window.innerWidth];"),
            10,
        )
        self.assertLessEqual(overflow[0], overflow[1], "horizontal scrolling at phone width")
        self.save_screenshot("request-view-phone.png")
        d.set_window_size(1280, 1000)

        # The view survives a reload: the token is kept in the tab.
        d.refresh()
        self.wait(30).until(lambda d: d.find_element(By.ID, "request-state").text == "completed with errors")

    def test_5_long_requests_are_paged_with_show_more(self):
        d = self.driver
        photo_base = f"http://127.0.0.1:{self.photos.server_address[1]}/"
        many = self.tmp / "many.csv"
        rows = "".join(f"{n},Item {n},{photo_base}no-such-photo.jpg\n" for n in range(1, 106))
        many.write_text("S. No.,Product Name,Input Image Urls\n" + rows, encoding="utf-8")
        self.open_page()
        self.upload(many, TOKEN)
        self.wait().until(EC.url_matches(r"#/requests/[0-9a-f-]{36}$"))
        self.wait(60).until(lambda d: d.find_element(By.ID, "request-state").text == "failed")
        self.assertIn("105 of 105 images done", d.find_element(By.ID, "progress-text").text)
        self.assertEqual(len(d.find_elements(By.CSS_SELECTOR, "#products .product")), 100)
        more = d.find_element(By.ID, "more-products")
        self.assertTrue(more.is_displayed())
        more.click()
        # The next products come from the page after next_cursor.
        self.wait().until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#products .product")) == 105)
        self.wait().until(EC.invisibility_of_element_located((By.ID, "more-products")))
        last = d.find_elements(By.CSS_SELECTOR, "#products .product h3")[-1].text
        self.assertEqual(last, "S. No. 105 Item 105")
        self.assertEqual(len(d.find_elements(By.CSS_SELECTOR, "#products .card.failed")), 105)
        self.assertEqual(self.console_problems(), [])

    def save_screenshot(self, name, full_page=False):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        if full_page:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
