"""The site renderer: pages for everything, JSON API equal to the CLI's JSON, escaping, failing builds."""
from __future__ import annotations

import html
import html.parser
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftkb.cli import app
from peftkb.loader import find_root
from peftkb.site.render import (SiteError, build_site, check_site, count_latex, fence, md_text, mermaid_label,
                                safe_url)

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"


def _nav_pages(nav: list) -> set[str]:
    out: set[str] = set()
    for item in nav:
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                out |= _nav_pages(value) if isinstance(value, list) else {value}
        elif isinstance(item, list):
            out |= _nav_pages(item)
    return out


def _cli_json(root: Path, *args: str):
    """What `peftkb --root ROOT ARGS --format json` prints, run in-process."""
    from peftkb.cli import common

    cached = getattr(common, "catalog", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()  # another test may have loaded a different knowledge base
    before = os.environ.get("PEFTKB_ROOT")
    try:
        result = CliRunner().invoke(app, ["--root", str(root), *args, "--format", "json"])
    finally:  # --root sets $PEFTKB_ROOT for the process; leave it as it was
        if before is None:
            os.environ.pop("PEFTKB_ROOT", None)
        else:
            os.environ["PEFTKB_ROOT"] = before
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the real catalog -----------------------------------------------------------------------------
def test_every_method_has_a_page(rendered):
    for m in rendered.catalog.methods:
        page = rendered.docs / "methods" / f"{m.id}.md"
        assert page.is_file(), m.id
        assert f"# {md_text(m.name)}" in page.read_text(encoding="utf-8")


def test_every_category_has_a_page(rendered):
    for c in rendered.catalog.categories:
        assert (rendered.docs / "taxonomy" / c.id / "index.md").is_file(), c.id


def test_fixed_pages_exist(rendered):
    for page in ("index.md", "taxonomy/index.md", "methods/index.md", "comparison.md", "timeline.md",
                 "survey.md", "assessment.md", "api.md"):
        assert (rendered.docs / page).is_file(), page


def test_nav_lists_every_page(rendered):
    assert _nav_pages(rendered.result.nav) == set(rendered.result.pages)


def test_json_api_methods_equals_cli_list(rendered):
    api = json.loads((rendered.docs / "api" / "methods.json").read_text(encoding="utf-8"))
    assert api == _cli_json(rendered.root, "list")


def test_json_api_method_equals_cli_show(rendered):
    for m in rendered.catalog.methods:
        api = json.loads((rendered.docs / "api" / "methods" / f"{m.id}.json").read_text(encoding="utf-8"))
        assert api == _cli_json(rendered.root, "show", m.id), m.id


def test_json_api_taxonomy_equals_cli_tree(rendered):
    api = json.loads((rendered.docs / "api" / "taxonomy.json").read_text(encoding="utf-8"))
    assert api == _cli_json(rendered.root, "tree")


def test_method_page_carries_aliases_for_search(rendered):
    for m in rendered.catalog.methods:
        text = (rendered.docs / "methods" / f"{m.id}.md").read_text(encoding="utf-8")
        for alias in m.aliases:
            assert str(md_text(alias)) in text, (m.id, alias)


def test_formula_is_emitted_as_math(rendered):
    text = (rendered.docs / "methods" / "lora.md").read_text(encoding="utf-8")
    lora = next(m for m in rendered.catalog.methods if m.id == "lora")
    assert "$$\nN = " + count_latex(lora.trainable_params) in text


def test_papers_get_a_bibtex_block(rendered):
    text = (rendered.docs / "methods" / "lora.md").read_text(encoding="utf-8")
    assert re.search(r"^```bibtex\n@\w+\{hu\d{4}lora,$", text, re.M)


def test_category_page_lists_its_methods(rendered):
    text = (rendered.docs / "taxonomy" / "reparameterized" / "index.md").read_text(encoding="utf-8")
    for m in rendered.catalog.methods:
        if m.category.split("/")[0] == "reparameterized":
            assert f"(../../methods/{m.id}.md)" in text, m.id


def test_medium_confidence_is_not_presented_as_the_survey_saying(rendered):
    for m in rendered.catalog.methods:
        text = (rendered.docs / "methods" / f"{m.id}.md").read_text(encoding="utf-8")
        if m.survey.confidence == "high":
            assert '!!! success "Placed by the survey"' in text
        else:
            assert "Placed by the survey" not in text, m.id


# -- helpers ------------------------------------------------------------------------------------------
def test_md_text_makes_markdown_and_html_inert():
    out = str(md_text('<script>alert("x")</script> [a](javascript:alert(1)) **b** | `c` $d$'))
    assert "<" not in out and ">" not in out and "[" not in out and "`" not in out and "$" not in out
    assert html.unescape(out) == '<script>alert("x")</script> [a](javascript:alert(1)) **b** | `c` $d$'


def test_fence_outlasts_backticks_inside():
    block = str(fence("a\n````\nb", "text"))
    assert block.startswith("`````text\n") and block.endswith("\n`````")


def test_only_http_urls_are_links():
    assert safe_url("https://arxiv.org/abs/2106.09685") == "https://arxiv.org/abs/2106.09685"
    for bad in ("javascript:alert(1)", "data:text/html,x", "ftp://x.org/a", "//evil.org", "/local", None, ""):
        assert safe_url(bad) is None


def test_mermaid_labels_escape_syntax():
    assert mermaid_label('a "b" <c> #d') == "a #quot;b#quot; #lt;c#gt; #35;d"


# -- building -----------------------------------------------------------------------------------------
MALICIOUS_SUMMARY = ('<script>alert("pwned")</script> <img src=x onerror=alert(2)> [click me](javascript:alert(3)) '
                     "**not bold** $x$ | pipe {: .cls } :smile:")
MALICIOUS_NAME = "LoRA<img src=x onerror=alert(4)>"


def test_catalog_text_is_escaped_in_the_built_site(kb, tmp_path):
    kb.edit("lora.yaml", "name: LoRA\n", f"name: '{MALICIOUS_NAME}'\n")
    text = kb.read("lora.yaml")
    start = text.index("summary: >-")
    end = text.index("papers:")
    kb.write("lora.yaml", text[:start] + f"summary: '{MALICIOUS_SUMMARY}'\n" + text[end:])
    report = build_site(kb.root, site_dir=SITE, docs_dir=tmp_path / "docs", build_dir=tmp_path / "build",
                        site_url="https://example.org/peftkb/")
    page = (report.build_dir / "methods" / "lora.html").read_text(encoding="utf-8")
    # with a site URL the sitemap lists every page under it
    sitemap = (report.build_dir / "sitemap.xml").read_text(encoding="utf-8")
    assert "<loc>https://example.org/peftkb/methods/lora.html</loc>" in sitemap
    assert sitemap.count("<loc>") == len(list(report.build_dir.rglob("*.html"))) - 1  # all but 404.html
    assert "pwned" in page  # the summary is there...
    assert '<script>alert("pwned")' not in page  # ...but never as markup
    assert not re.search(r"""<img[^>]*onerror""", page)
    assert "javascript:" not in re.sub(r"&#\d+;", "", " ".join(re.findall(r'href="([^"]*)"', page)))
    assert "<strong>not bold</strong>" not in page
    # what a reader sees is the original text
    visible = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert MALICIOUS_SUMMARY.replace("  ", " ") in visible
    assert MALICIOUS_NAME in visible
    # the search index holds the name as text, not markup
    index = json.loads((report.build_dir / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert not any("<img src=x" in (doc.get("title", "") + doc.get("text", "")) for doc in index["docs"])
    problems, _ = check_site(report.build_dir, site_url="https://example.org/peftkb/")
    assert problems == []
    assert check_site(report.build_dir)[0]  # its 404 page links under /peftkb/, not the server root


def test_template_error_fails_with_file_and_line(tmp_path, copy_site):
    site = copy_site(tmp_path / "site")
    api = site / "templates" / "api.md.j2"
    api.write_text(api.read_text(encoding="utf-8") + "\n{{ no_such_variable }}\n", encoding="utf-8")
    with pytest.raises(SiteError, match=r"api\.md\.j2:\d+: .*no_such_variable"):
        build_site(find_root(), site_dir=site, docs_dir=tmp_path / "docs", build_dir=tmp_path / "build")


def test_broken_markdown_link_fails_the_build(tmp_path, copy_site, kb):
    site = copy_site(tmp_path / "site")
    api = site / "templates" / "api.md.j2"
    api.write_text(api.read_text(encoding="utf-8") + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    with pytest.raises(SiteError, match="strict"):
        build_site(kb.root, site_dir=site, docs_dir=tmp_path / "docs", build_dir=tmp_path / "build")


def test_broken_html_link_fails_the_build(tmp_path, copy_site, kb):
    site = copy_site(tmp_path / "site")
    api = site / "templates" / "api.md.j2"
    api.write_text(api.read_text(encoding="utf-8") + '\n<p><a href="gone.html">gone</a></p>\n', encoding="utf-8")
    with pytest.raises(SiteError, match=r"api\.html: broken link 'gone\.html'"):
        build_site(kb.root, site_dir=site, docs_dir=tmp_path / "docs", build_dir=tmp_path / "build")


def test_link_check_finds_broken_and_offsite_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "ok.html").write_text('<p id="here">x</p>', encoding="utf-8")
    (tmp_path / "sub" / "page.html").write_text(
        '<a href="../ok.html#here">fine</a><a href="https://example.org/">fine</a><a href="#top">bad anchor</a>'
        '<a href="../gone.html">broken</a><a href="../ok.html#nowhere">bad anchor</a>'
        '<script src="https://cdn.example.org/x.js"></script><a href="javascript:alert(1)">js</a>',
        encoding="utf-8")
    problems, checked = check_site(tmp_path)
    assert checked == 7
    assert len(problems) == 5, problems
    assert any("gone.html" in p for p in problems) and any("cdn.example.org" in p for p in problems)
    assert any("javascript" in p for p in problems)


def test_cli_build_error_is_a_message_not_a_traceback(cli, kb, copy_site):
    site = copy_site(kb.root / "site")
    tpl = site / "templates" / "home.md.j2"
    tpl.write_text(tpl.read_text(encoding="utf-8") + "\n{% if %}\n", encoding="utf-8")
    result = cli("docs", "build", root=kb.root)
    assert result.returncode == 2
    assert "home.md.j2" in result.stderr and "Traceback" not in result.stderr


def test_assessment_page_shows_every_committed_run_and_every_finding(rendered):
    from peftkb.bench import report
    from peftkb.bench.runner import PROFILES, read_results
    from peftkb.site import assessment

    suites = assessment.load_all(rendered.root)
    assert suites, "benchmarks/results/bench-<profile>/results.jsonl holds committed results"
    page = (rendered.docs / "assessment.md").read_text(encoding="utf-8")
    for a in suites:
        records = [r for folder in a.folders
                   for r in read_results(rendered.root / folder / "results.jsonl").values()]
        # each committed profile's table is complete: every method on every model, all ok
        for name in a.profiles:
            profile = PROFILES[name]
            done = {(r["method"], r["model"]) for r in records if r["status"] == "ok" and r["profile"] == name}
            assert done == {(m, model) for m in profile.methods for model in profile.models}, name
        for cell in report.summarise(records):  # the table shows each cell's chosen runs
            assert f"{cell.trainable_params:,}" in page, (cell.method, cell.model)
        for model in a.models:
            assert (rendered.docs / "assets" / "bench" / a.profile / f"accuracy_vs_params_{model}.svg").is_file()
        assert f"suite-{a.profile.replace('-', '')}" in page and len(a.findings) == 4
        for f in a.findings:
            assert f"**{f.verdict}**" in page and f.verdict in ("supported", "not supported", "not distinguishable", "not testable")
        for inv in a.invocations:  # provenance: the command that produced the results, its time, its note
            assert inv["command"].startswith("peftkb bench") and inv["machine"]
            wall = inv.get("wall_seconds")
            shown = html.unescape(page)  # the page escapes punctuation as character references
            assert (f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else "not recorded") in shown
            assert inv.get("note", "")[:40] in shown
    # an invocation whose log entry was lost (bench-cpu's first) says so rather than breaking the page
    assert any(inv.get("wall_seconds") is None for a in suites for inv in a.invocations)


def test_assessment_without_results_says_how_to_make_them(tmp_path):
    from peftkb.site import assessment
    from peftkb.site.render import make_environment

    assert assessment.load(tmp_path) is None
    env = make_environment(SITE / "templates")
    assert assessment.load_all(tmp_path) == []
    page = env.get_template("assessment.md.j2").render(page_path="assessment.md", suites=[], model=None, catalog=None)
    assert "No results committed yet" in page and "peftkb bench --profile cpu" in page


# -- the built site ---------------------------------------------------------------------------------
class _EntityLeaks(html.parser.HTMLParser):
    """Visible text and attribute values, decoded as a browser decodes them, that still hold `&#`: a
    character reference escaped twice (`&amp;#95;`), which a reader sees as `&#95;`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.leaks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and "&#" in value:
                self.leaks.append(f"<{tag} {name}={value[:80]!r}>")

    def handle_data(self, data: str) -> None:
        if "&#" in data:
            at = data.index("&#")
            self.leaks.append(f"text {data[max(0, at - 40):at + 20]!r}")


def test_no_character_reference_leaks_into_the_built_site(built_site):
    pages = sorted(built_site.rglob("*.html"))
    assert len(pages) > 100
    leaks = {}
    for page in pages:
        raw = page.read_text(encoding="utf-8")
        parser = _EntityLeaks()
        parser.feed(raw)
        if "&amp;#" in raw:
            parser.leaks.append("raw &amp;#")
        if parser.leaks:
            leaks[page.relative_to(built_site).as_posix()] = parser.leaks[:3]
    assert leaks == {}


def test_no_empty_sitemap_and_a_helpful_404(built_site):
    assert not (built_site / "sitemap.xml").exists()  # no site URL configured: nothing to list
    page = (built_site / "404.html").read_text(encoding="utf-8")
    for target in ("/methods/index.html", "/taxonomy/index.html", "/comparison.html"):
        assert f'href="{target}"' in page
    assert "search" in page


def test_escaping_once_keeps_flags_and_code_readable(built_site):
    compare = (built_site / "comparison.html").read_text(encoding="utf-8")
    assert 'data-flags="supports_multi_task' in compare or ' supports_multi_task' in compare
    ln = (built_site / "methods" / "ln-tuning.html").read_text(encoding="utf-8")
    assert re.search(r"<code>[^<]*input&#95;layernorm", ln)  # one numeric reference: shown as input_layernorm


def test_survey_claims_carry_their_source(rendered):
    survey = (rendered.docs / "survey.md").read_text(encoding="utf-8")
    assessment = (rendered.docs / "assessment.md").read_text(encoding="utf-8")
    for text in (survey, assessment):
        assert "third&#45;party summary" in text or "third-party summary" in text
        assert "As stated by the survey" not in text
    assert "once they exist" not in survey
    assert "(assessment.md)" in survey  # the benchmark section links the results
    assert "arxiv.org/abs/2312.12148" in survey and "Transactions on Pattern Analysis" in survey


def test_floor_of_one_is_shown_as_a_plain_floor():
    from peftkb.site.formulas import formula_latex

    tex = formula_latex("n_params * density // 1")
    assert r"\frac" not in tex and tex.endswith(r"\right\rfloor")
    assert formula_latex("(a + b) // 2") == r"\left\lfloor \frac{a + b}{2} \right\rfloor"  # a real division stays
    assert formula_latex("x // 1 + y // 1").count(r"\lfloor") == 2


def test_first_sentence_does_not_stop_at_abbreviations_or_inside_brackets():
    from peftkb.site.model import first_sentence

    assert first_sentence("Trains biases (e.g. of q and v) only. Then more.") == "Trains biases (e.g. of q and v) only."
    assert first_sentence("Follows Hu et al. in spirit. Second.") == "Follows Hu et al. in spirit."
    bracket = "Uses a mask (see Fig. 2. for details) too."
    assert first_sentence(bracket + " Next.") == bracket
    assert first_sentence("One. Two.") == "One."
    long = "word " * 60
    assert first_sentence(long).endswith("…") and len(first_sentence(long)) <= 180


def test_prose_shows_code_spans_as_code_and_escapes_the_rest():
    from peftkb.site.escape import prose

    out = str(prose("Use `seq_bn` <b>not</b> `x*`"))
    assert out.startswith("Use <code>seq&#95;bn</code> &#60;b&#62;not&#60;/b&#62; <code>x&#42;</code>")
    assert "`" not in out


def test_catalog_notes_show_no_raw_backticks(built_site):
    for mid in ("adapterfusion", "adaptersoup", "dora", "loha", "pfeiffer-adapter"):
        text = (built_site / "methods" / f"{mid}.html").read_text(encoding="utf-8")
        assert "&#96;" not in text and "`" not in re.sub(r"<(pre|code)[^>]*>.*?</\1>", "", text, flags=re.S), mid


def test_category_counts_add_up_on_the_taxonomy_page(rendered):
    from peftkb.site.model import SiteModel

    model = SiteModel(catalog=rendered.catalog, root=rendered.root)
    text = (rendered.docs / "taxonomy" / "index.md").read_text(encoding="utf-8")
    for c in rendered.catalog.categories:
        kids = model.children.get(c.id, [])
        if kids:  # subtree = direct + the subcategories' subtrees, and the direct ones are listed
            direct = model.direct_methods(c.id)
            assert len(model.subtree_methods(c.id)) == len(direct) + sum(len(model.subtree_methods(k.id)) for k in kids)
            for m in direct:
                assert f"(../methods/{m.id}.md)" in text, (c.id, m.id)


def test_wide_counts_are_broken_into_lines(rendered):
    text = (rendered.docs / "methods" / "xlora.md").read_text(encoding="utf-8")
    assert r"\begin{aligned} N = {} &" in text and text.count(r"\\ &") >= 2


def test_method_pages_show_the_calculators_numbers_and_their_cli_lines(rendered):
    # LoRA with the catalog's default r on q and v; Llama-3.2-3B: 28 layers, q 3072->3072, v 3072->1024
    lora = next(m for m in rendered.catalog.methods if m.id == "lora")
    r = next(h.default for h in lora.hyperparameters if h.name == "r")
    assert list(lora.trainable_params.targets) == ["q", "v"]
    text = (rendered.docs / "methods" / "lora.md").read_text(encoding="utf-8")
    assert f"| {28 * r * ((3072 + 3072) + (3072 + 1024)):,} |" in text
    assert "peftkb params lora -m llama-3.2-3b\n" in text
    assert "peftkb memory lora -m llama-3.2-3b --batch 1 --seq 512" in text
    # every number shown is what the CLI prints for the line shown beside it
    for mid in ("lora", "ia3", "qlora", "prefix-tuning"):
        page = (rendered.docs / "methods" / f"{mid}.md").read_text(encoding="utf-8")
        rows = re.findall(r"^\| <code>([^<]+)</code> \| ([\d,]+) \| [^|]+ \| ([^ ]+) GiB", page, re.M)
        assert rows, mid
        for preset, trainable, gib in rows:
            preset = html.unescape(preset)
            params = _cli_json(rendered.root, "params", mid, "-m", preset)
            memory = _cli_json(rendered.root, "memory", mid, "-m", preset, "--batch", "1", "--seq", "512")
            assert int(trainable.replace(",", "")) == params["trainable"] == memory["trainable"], (mid, preset)
            assert html.unescape(gib) == f"{memory['peak_gib']:.1f}" or abs(
                float(html.unescape(gib)) - memory["peak_bytes"] / 2**30) < 0.05, (mid, preset)


def test_a_calculator_error_leaves_the_numbers_out(monkeypatch, rendered):
    from peftkb.calculators import params
    from peftkb.site.numbers import Numbers

    def broken(*args, **kwargs):
        raise ValueError("calculator broken")

    lora = next(m for m in rendered.catalog.methods if m.id == "lora")
    monkeypatch.setattr(params, "count_trainable", broken)
    assert Numbers().of(lora) == []


def test_hyperparameter_defaults_show_their_source(rendered):
    for m in rendered.catalog.methods:
        sourced = [h for h in m.hyperparameters if h.default is not None and h.source is not None]
        if not sourced:
            continue
        text = (rendered.docs / "methods" / f"{m.id}.md").read_text(encoding="utf-8")
        for h in sourced:
            assert str(md_text(h.source.ref)) in text, (m.id, h.name)
            if h.source.url:
                assert f'href="{html.escape(h.source.url)}"' in text, (m.id, h.name)
        for h in m.hyperparameters:
            if h.differs:
                assert "differs: " in text, (m.id, h.name)


def test_search_keys_rank_the_typed_name_above_names_it_prefixes(rendered):
    from peftkb.site.search import search_front_matter, search_key, search_key_table, search_keys

    assert search_key("LoRA+") == "loraplus" and search_key("(IA)³") == "ia3" and search_key("LoRA-FA") == "lorafa"
    by_id = {m.id: m for m in rendered.catalog.methods}
    width = max(len(search_keys(m)) for m in rendered.catalog.methods)
    front = {i: search_front_matter(by_id[i], width) for i in ("lora", "lora-fa", "loramoe")}
    assert all(len(f["tags"]) == width for f in front.values())  # one length: BM25 treats them alike
    boost = {i: f["search"]["boost"] for i, f in front.items()}
    assert boost["lora"] > 2 * boost["lora-fa"] and boost["lora"] > 2 * boost["loramoe"]
    table = json.loads(search_key_table(rendered.catalog).split("=", 1)[1].rstrip(";\n"))
    assert table["lora"] == "methods/lora.html" and table["ia3"] == "methods/ia3.html"
    assert table["houlsbyadapter"] == "methods/sequential-adapter.html"
