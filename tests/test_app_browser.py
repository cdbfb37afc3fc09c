"""The app in a real browser: Playwright drives Debian's Chromium through the page as a person would (upload the
samples and their tags, add 'arrow', watch the live gallery, review, predict, download the checkpoint).
Screenshots of each stage go to tests/artifacts/ (git-ignored)."""
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow  # a real browser and an update through the page

pytest.importorskip("gradio", reason="the app tests need gradio (pip install gradio)")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser test needs playwright (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip(f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from research.app_testing import launched, tiny_checkpoint  # noqa: E402
from research.demo import write_samples  # noqa: E402
from wilss.checkpoint import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_browser")
    samples = write_samples(root / "samples", n_positive=40, n_negative=24)
    ckpt = tiny_checkpoint(root / "base.pt", seed=1)
    with launched(ckpt, samples, root / "work", log_path=root / "server.log") as url:
        yield url, samples, root


@pytest.fixture(scope="module")
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("browser_*.png"):
        old.unlink()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield context.new_page()
        browser.close()


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"), full_page=True)


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_add_class_in_the_browser(app_url, page, tmp_path):
    url, samples, _ = app_url
    start = time.perf_counter()
    page.goto(url)
    # the first render after the app starts: 26 s on a quiet CPU-2, over 60 s when the machine is saturated
    page.wait_for_selector("#model-classes table tr[data-class='hexagon']", timeout=180_000)
    print(f"page ready in {time.perf_counter() - start:.2f} s")
    assert "arrow" not in page.locator("#model-classes").inner_text()
    shot(page, "1_model")

    # Data: many images at once plus a tags file, as a person picks them in the file dialog
    open_tab(page, "Data")
    page.locator("#data-files input[type=file]").set_input_files(sorted(str(p) for p in samples.glob("*.jpg")))
    page.locator("#tags-file input[type=file]").set_input_files(str(samples / "tags.csv"))
    page.get_by_role("button", name="Use these files").click()
    sync_api.expect(page.locator("#data-status")).to_contain_text("64 images from your upload", timeout=60_000)
    sync_api.expect(page.locator("#data-counts")).to_contain_text("arrow")
    sync_api.expect(page.locator("#data-thumbs")).to_contain_text("arrow: 000.jpg")   # thumbnails with their tags
    shot(page, "2_data")

    # Add classes: name and colour are prefilled from the new tag; short settings under "advanced"
    open_tab(page, "Add classes")
    name = page.locator("#class-name-0 input, #class-name-0 textarea").first
    sync_api.expect(name).to_have_value("arrow")
    page.locator("#advanced").get_by_text("Advanced").first.click()
    for field, value in (("epochs", 2), ("warmup_epochs", 1), ("batch_size", 8), ("localizer_channels", 16)):
        set_number(page, f"adv-{field}", value)
    assert not page.locator("#cancel-btn").is_enabled()   # nothing runs yet
    page.get_by_role("button", name="Add the classes").click()
    page.wait_for_selector("#progress [data-phase]", timeout=60_000)
    shot(page, "3_running")
    sync_api.expect(page.locator("#progress")).to_contain_text("saved as v001", timeout=120_000)
    gallery = page.locator("#live-gallery")
    sync_api.expect(gallery.locator("img").first).to_be_visible()
    text = gallery.inner_text()
    for caption in ("000.jpg", "CAM arrow", "pseudo-label", "mask"):
        assert caption in text, text
    assert gallery.locator("img").count() >= 12          # 4 images x (image, CAM, pseudo-label, mask)
    sync_api.expect(page.locator("#header")).to_contain_text("v001")
    # the quality on the samples' held-out images, before and after (this run's 2 epochs from an untrained base
    # teach nothing reliable: the test checks the table is there and sane, benchmark demo measures the recipe)
    held = page.locator("#heldout-table")
    sync_api.expect(held).to_contain_text("IoU arrow (new)", timeout=60_000)
    sync_api.expect(page.locator("#heldout-info")).to_contain_text("60 held-out images")
    for label in ("mIoU old", "mIoU new", "mIoU all"):
        assert label in held.inner_text()
    sync_api.expect(page.locator("#cancel-btn")).to_be_disabled()
    assert "common.complete" not in page.inner_text("body")
    shot(page, "4_done")

    # Review: page through the training images, reject one by clicking it
    open_tab(page, "Review")   # opening the tab shows the last update's first page
    review = page.locator("#review-gallery")
    sync_api.expect(review).to_contain_text("CAM arrow", timeout=60_000)
    review.locator("img").first.click()
    sync_api.expect(page.locator("#rejected")).to_contain_text("000.jpg")
    shot(page, "5_review")

    # Predict: drop an image, get the mask over it and the legend with the new class
    open_tab(page, "Predict")
    page.locator("#predict-file input[type=file]").set_input_files(str(samples / "001.jpg"))
    sync_api.expect(page.locator("#predict-legend [data-class='arrow']")).to_be_visible(timeout=60_000)
    sync_api.expect(page.locator("#predict-overlay img")).to_be_visible()
    sync_api.expect(page.locator("#predict-status")).to_contain_text("001.jpg")
    shot(page, "6_predict")

    # Versions & export: download the checkpoint
    open_tab(page, "Versions & export")
    link = page.locator("#ckpt-file a").first
    sync_api.expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    target = tmp_path / "downloaded.pt"
    info.value.save_as(target)
    ckpt = load_checkpoint(target)
    assert ckpt.class_names[-1] == "arrow"
    shot(page, "7_versions")
    shutil.copy(target, tmp_path / "kept.pt")

    # Roll back to v000: Predict shows v000's prediction of the dropped image, not v001's maps
    page.locator("#versions input").click()
    page.locator("#versions [role=option]").first.click()
    page.get_by_role("button", name="Make this version current (roll back)").click()
    sync_api.expect(page.locator("#header")).to_contain_text("v000", timeout=30_000)
    open_tab(page, "Predict")
    sync_api.expect(page.locator("#predict-legend")).to_contain_text("v000", timeout=30_000)
    assert page.locator("#predict-legend [data-class='arrow']").count() == 0
    shot(page, "8_rollback")


# The held-out arrow IoU the one-click demo must show at least. `benchmark demo` measured the recipe on this
# machine's CPU (docs/results.md); the floor sits well under it, so that thread scheduling on another CPU cannot fail
# it, and far above what the previous recipe reached (3 to 5).
DEMO_ARROW_FLOOR = 35.0


def test_the_default_demo_teaches_arrow_in_the_browser(tmp_path_factory, page):
    """The first five minutes: the shipped base and samples/, one click with the default settings."""
    from research.app_testing import ROOT
    from models import DEFAULT_CHECKPOINT

    root = tmp_path_factory.mktemp("demo_browser")
    with launched(DEFAULT_CHECKPOINT, ROOT / "samples", root / "work", log_path=root / "server.log") as url:
        page.goto(url)
        page.wait_for_selector("#model-classes table tr[data-class='hexagon']", timeout=180_000)
        open_tab(page, "Add classes")
        sync_api.expect(page.locator("#class-name-0 input, #class-name-0 textarea").first).to_have_value("arrow")
        start = time.perf_counter()
        page.get_by_role("button", name="Add the classes").click()
        sync_api.expect(page.locator("#progress")).to_contain_text("saved as v001", timeout=900_000)
        held = page.locator("#heldout-table")
        sync_api.expect(held).to_contain_text("IoU arrow (new)", timeout=60_000)
        cells = [line.strip() for line in held.inner_text().splitlines() if line.strip()]   # a cell a line
        row = cells.index("IoU arrow (new)")
        before, after = float(cells[row + 1]), float(cells[row + 2])
        print(f"demo in the browser: {time.perf_counter() - start:.0f} s, held-out arrow IoU {before} -> {after}")
        shot(page, "demo_done")
        assert before == 0.0 and after >= DEMO_ARROW_FLOOR
