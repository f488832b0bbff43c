"""Drive a real browser (Debian's chromium, through playwright) over the built site, served on 127.0.0.1.

Checks what a reader relies on: navigation from home to a category and a method, rendered math, the BibTeX
block, the search box, the mermaid taxonomy diagram, no request leaving the machine, no console error.
Screenshots land in pytest's tmp_path.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SITE = Path(__file__).resolve().parents[2] / "site"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the browser test")
    pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def site_url(built_site):
    """The real site (built once per session, see conftest) served on 127.0.0.1 (a free port)."""
    _need_chromium()
    pytest.importorskip("playwright.sync_api")
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(site_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(15_000)
        pg.requests = []  # every URL the page asked for
        pg.errors = []  # console errors and uncaught exceptions
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.errors.append(f"exception: {e}"))
        yield pg
        context.close()
        browser.close()


def _offsite(urls: list[str]) -> list[str]:
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob", "about")
            and urlsplit(u).hostname != "127.0.0.1"]


def test_reader_journey(page, site_url, tmp_path):
    from playwright.sync_api import expect

    # home
    page.goto(site_url)
    expect(page.locator("h1")).to_contain_text("peftkb")
    page.screenshot(path=str(tmp_path / "1-home.png"), full_page=True)

    # home -> the reparameterized category
    page.locator("article").get_by_role("link", name="Reparameterized Fine-tuning", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/taxonomy/reparameterized/index\.html$"))
    expect(page.locator("h1")).to_have_text(re.compile(r"Reparameterized Fine-tuning"))
    page.screenshot(path=str(tmp_path / "2-reparameterized.png"), full_page=True)
    # its tables fit the text column (the formula column once made them ~1,960 px wide)
    widths = page.evaluate("() => [...document.querySelectorAll('article table')].map(t => t.scrollWidth)")
    column = page.evaluate("() => document.querySelector('article').clientWidth")
    assert widths and max(widths) <= column + 1, (widths, column)

    # category -> LoRA
    page.locator("article table").get_by_role("link", name="LoRA", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/methods/lora\.html$"))
    # the parameter-count formula, rendered by KaTeX into real math markup
    formula = page.locator(".arithmatex .katex-display").first
    expect(formula).to_be_visible()
    assert formula.locator(".katex-html").inner_text().strip(), "math rendered empty"
    # a copyable BibTeX block for the paper
    bibtex = page.locator(".highlight", has_text=re.compile(r"@\w+\{hu\d{4}lora,")).first
    expect(bibtex).to_be_visible()
    expect(bibtex.locator("button[data-md-type=copy], button.md-clipboard")).to_have_count(1)  # copy button
    page.screenshot(path=str(tmp_path / "3-lora.png"), full_page=True)

    # search: Material ignores fill(), so type like a person and follow the hit
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator("input.md-search__input").click()
    page.keyboard.type("prefix", delay=40)
    hit = page.locator(".md-search-result__item a[href*='methods/prefix-tuning.html']").first
    expect(hit).to_be_visible()
    page.screenshot(path=str(tmp_path / "4-search.png"))
    hit.click()
    expect(page).to_have_url(re.compile(r"/methods/prefix-tuning\.html"))
    expect(page.locator("h1")).to_contain_text("Prefix")

    # the taxonomy diagram: Material swaps the <pre class="mermaid"> source for a <div class="mermaid"> host
    # holding the SVG (in a closed shadow root), so a rendered diagram is a div with a real height
    page.goto(site_url + "taxonomy/index.html")
    page.wait_for_function(
        "() => { const d = document.querySelector('div.mermaid');"
        " return d !== null && d.getBoundingClientRect().height > 50; }")
    assert page.locator("pre.mermaid").count() == 0, "a mermaid source block was left unrendered"
    height = page.locator("div.mermaid").first.bounding_box()["height"]
    assert height > 50, height
    page.screenshot(path=str(tmp_path / "5-taxonomy.png"), full_page=True)

    assert _offsite(page.requests) == [], "requests left 127.0.0.1"
    assert page.errors == []


def test_comparison_filters_rows(page, site_url, tmp_path):
    from playwright.sync_api import expect

    page.goto(site_url + "comparison.html")
    rows = page.locator("[data-pk-compare] tbody tr")
    total = rows.count()
    assert total > 5
    page.select_option("select[data-filter=mergeable]", "true")
    visible = page.locator("[data-pk-compare] tbody tr:not([hidden])")
    assert 0 < visible.count() < total
    page.select_option("select[data-filter=cat]", "reparameterized")
    for row_id in visible.evaluate_all("rows => rows.map(r => r.dataset.cat)"):
        assert row_id.startswith("reparameterized")
    expect(page.locator("[data-count]")).to_contain_text(f"of {total} methods")
    page.screenshot(path=str(tmp_path / "compare.png"))
    page.locator("[data-reset]").click()
    assert visible.count() == total
    # every "must have" flag keeps exactly the rows whose data says they have it (none is always empty)
    expected = {"changes_sequence_length": "changes_sequence_length", "needs_quantized_base": "needs_quantized_base",
                "supports_multi_task": "supports_multi_task", "trains_base_weights": "trains_base_weights",
                "experiments": "in_experiments"}
    records = {m["id"]: m for m in page.evaluate(
        "() => fetch('api/methods.json').then(r => r.json())")}
    for flag, field in expected.items():
        box = page.locator(f"input[data-flag={flag}]")
        box.check()
        shown = set(visible.evaluate_all("rows => rows.map(r => r.dataset.id)"))
        want = {i for i, m in records.items()
                if (m["survey"] if field == "in_experiments" else m["properties"]).get(field)}
        assert shown == want and shown, (flag, len(shown), len(want))
        expect(page.locator("[data-count]")).to_have_text(f"{len(want)} of {total} methods")
        box.uncheck()
    assert _offsite(page.requests) == []
    assert page.errors == []


def _search(page, query):
    """Type a query into Material's search box (it reacts to key presses, not fill()); the ranked page files.

    The box is emptied first (its results then clear), so each query's results are its own.
    """
    box = page.locator("input.md-search__input")
    if not box.is_visible():
        page.locator("label.md-search__icon, .md-search__input").first.click()
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    page.wait_for_function("() => !document.querySelector('.md-search-result__list > li')")
    page.keyboard.type(query, delay=15)
    page.wait_for_function(
        "q => document.querySelector('input.md-search__input').value === q &&"
        " (document.querySelector('.md-search-result__list > li')"
        "  || /No matching/.test(document.querySelector('.md-search-result__meta').textContent))", arg=query)
    # the worker answers keystrokes in turn, slower as the index grows: wait for the answer to the whole query
    # (Material puts the query's terms in each result's ?h=), then until the list has stopped changing
    page.wait_for_function(
        """q => {
            // letters only: the site's search separator splits words at digits too (site/mkdocs.yml)
            const words = s => s.toLowerCase().split(/[^\\p{L}]+/u).filter(Boolean).join(' ');
            const a = document.querySelector('.md-search-result__list > li > a');
            if (!a) return /No matching/.test(document.querySelector('.md-search-result__meta').textContent);
            return words(new URL(a.href).searchParams.get('h') || '') === words(q);
        }""", arg=query, timeout=30_000)
    read = lambda: page.locator(".md-search-result__list > li > a").evaluate_all(  # noqa: E731
        "as => as.map(a => a.pathname)")
    hrefs, previous = read(), None
    for _ in range(20):
        if hrefs == previous:
            break
        page.wait_for_timeout(300)
        previous, hrefs = hrefs, read()
    return [h.rsplit("/", 1)[-1] for h in hrefs]


# a method's name or alias, typed, ranks its page first (LoRA used to come 16th, behind LoRAMoE)
SEARCHES = {"tuning": None, "t": None,   # any result: queries starting with 't' once broke the worker
            "lora": "lora.html", "LoRA": "lora.html", "qlora": "qlora.html", "dora": "dora.html",
            "adalora": "adalora.html", "compacter": "compacter.html", "lora-fa": "lora-fa.html",
            "prefix tuning": "prefix-tuning.html", "prompt tuning": "prompt-tuning.html",
            "ia3": "ia3.html",                                   # alias of (IA)³
            "houlsby adapter": "sequential-adapter.html",        # alias
            "adapter": "sequential-adapter.html",                # alias, also a prefix of AdapterSoup, AdapterDrop...
            "low-rank adaptation": "lora.html"}                  # alias


def test_search_ranks_exact_names_and_aliases_first(page, site_url):
    page.goto(site_url + "methods/index.html")
    ranked = {query: _search(page, query)[:3] for query in SEARCHES}
    wrong = {q: r for q, r in ranked.items() if not r or (SEARCHES[q] is not None and r[0] != SEARCHES[q])}
    assert wrong == {}
    # Enter opens the first result: LoRA, not LoRAMoE
    _search(page, "lora")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/methods/lora\.html"))
    assert page.errors == []


def _luminance(css: str) -> float:
    """Relative luminance (WCAG) of a computed `rgb(...)`/`rgba(...)` colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_assessment_plots_are_readable_in_the_dark_scheme(site_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
        page = context.new_page()
        page.goto(site_url + "assessment.html")
        assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == "slate"
        texts = page.locator(".pk-plot svg text")
        assert texts.count() > 10
        fills = set(texts.evaluate_all("ts => ts.map(t => getComputedStyle(t).fill)"))
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.screenshot(path=str(tmp_path / "assessment-dark.png"), full_page=True)
        context.close()
        browser.close()
    light_bg = _luminance(background)
    for fill in fills:  # WCAG contrast ratio of every plot text colour against the page
        hi, lo = sorted((_luminance(fill), light_bg), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (fill, background)


def test_evidence_plots_pick_a_source_and_read_in_the_dark_scheme(site_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(site_url + "comparison.html#measured-evidence")
        groups = page.locator("[data-evidence-group]")
        keys = groups.evaluate_all("gs => gs.map(g => g.dataset.evidenceGroup)")
        assert len(keys) >= 2
        select = page.locator("select[data-evidence-select]")
        assert select.is_visible()
        visible = lambda: [k for k, g in zip(keys, groups.all()) if g.is_visible()]  # noqa: E731
        assert visible() == [keys[0]]  # one source at a time, the published runs first
        select.select_option(keys[-1])
        assert visible() == [keys[-1]]
        shown = page.locator(f'[data-evidence-group="{keys[-1]}"] .pk-plot svg')
        assert shown.count() == 2 and shown.first.locator("circle.pk-front").count() >= 1
        fills = set(shown.first.locator("text").evaluate_all("ts => ts.map(t => getComputedStyle(t).fill)"))
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.screenshot(path=str(tmp_path / "evidence-dark.png"), full_page=True)
        context.close()
        browser.close()
    assert errors == []
    for fill in fills:  # every plot text (axes, labels of the front) readable on the dark page
        hi, lo = sorted((_luminance(fill), _luminance(background)), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (fill, background)


LEAK_PAGES = ("comparison.html", "methods/lora.html", "methods/ln-tuning.html", "methods/xattn-tuning.html", "assessment.html",
              "taxonomy/index.html", "taxonomy/additive/adapter-based/index.html", "methods/adapterfusion.html")


def test_no_character_reference_shows_on_screen(page, site_url):
    """What a reader sees (text, labels, tooltips) never holds a character reference like `&#95;`."""
    leaks = {}
    for path in LEAK_PAGES:
        page.goto(site_url + path)
        found = page.evaluate("""() => {
            const out = [];
            const seen = document.body.innerText.match(/.{0,30}&(#|amp;).{0,20}/);
            if (seen) out.push(seen[0]);
            for (const el of document.querySelectorAll('*'))
                for (const a of el.attributes)
                    if (/&#|&amp;#/.test(a.value)) out.push(el.tagName + ' ' + a.name + '=' + a.value.slice(0, 60));
            return out.slice(0, 3);
        }""")
        if found:
            leaks[path] = found
    assert leaks == {}
    assert page.errors == []
