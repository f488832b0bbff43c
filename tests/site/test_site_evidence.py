"""Method pages show the complete peft / AdapterHub setups and every measured run; the Compare page plots
accuracy against cost with the Pareto front and publishes the calculators' check against peft's runs."""
from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftkb.evidence import Measurement, measurements, pareto_front

PRESET = "llama-3.2-3b"


def _blocks(page: str) -> list[str]:
    """The text of every highlighted code block of a built page, as a reader would copy it."""
    return [html.unescape(re.sub(r"<[^>]+>", "", b)).rstrip("\n")
            for b in re.findall(r"<pre[^>]*>(?:<span></span>)?<code>(.*?)</code></pre>", page, re.S)]


def _methods(catalog) -> dict:
    return {m.id: m for m in catalog.methods}


def _built(built_site: Path, page: str) -> str:
    return (built_site / page).read_text(encoding="utf-8")


def _visible(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


# -- the exported setups ----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_method_pages_show_the_exported_scripts_whole(built_site, rendered):
    pytest.importorskip("peft")
    from peftkb.calculators.architecture import load_model
    from peftkb.interop.adapters_export import adapters_setup
    from peftkb.interop.peft_export import peft_setup, python_script

    arch = load_model(PRESET)
    methods = _methods(rendered.catalog)
    for mid in ("lora", "qlora", "adalora", "ia3", "prefix-tuning"):
        blocks = _blocks(_built(built_site, f"methods/{mid}.html"))
        expected = python_script(peft_setup(methods[mid], arch)).rstrip("\n")
        assert expected in blocks, mid  # the whole script, one block, character for character
    for mid in ("lora", "ia3", "prefix-tuning", "compacter"):
        page = _built(built_site, f"methods/{mid}.html")
        setup = adapters_setup(methods[mid], methods[mid].defaults(), d_model=arch.d_model)
        assert setup.python_script().rstrip("\n") in _blocks(page), mid
        assert setup.config_string in _visible(page), mid


def test_the_page_shows_what_the_export_command_prints(built_site):
    from peftkb.cli import app

    result = CliRunner().invoke(app, ["export", "qlora", "--to", "peft", "-f", "python"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") in _blocks(_built(built_site, "methods/qlora.html"))


def test_qlora_and_adalora_scripts_are_the_complete_ones(built_site):
    qlora = next(b for b in _blocks(_built(built_site, "methods/qlora.html")) if "get_peft_model" in b)
    assert "BitsAndBytesConfig" in qlora and "prepare_model_for_kbit_training(model)" in qlora
    assert "load_in_4bit=True" in qlora
    adalora = next(b for b in _blocks(_built(built_site, "methods/adalora.html")) if "get_peft_model" in b)
    assert "update_and_allocate" in adalora and "total_step" in adalora


def test_no_library_setup_on_a_method_page_is_cut_short(built_site, rendered):
    shown = 0
    for m in rendered.catalog.methods:
        page = _built(built_site, f"methods/{m.id}.html")
        for anchor in ('id="peft"', 'id="adapters"'):
            if anchor not in page:
                continue
            start = page.index(anchor)
            section = page[start:page.find("<h", start + 1)]
            for block in _blocks(section):
                shown += 1
                assert "…" not in block, (m.id, block[:80])
    assert shown >= 50  # every peft or AdapterHub method but the few the export refuses


def test_method_pages_show_the_count_and_estimate_lines_beside_the_script(rendered):
    text = (rendered.docs / "methods" / "qlora.md").read_text(encoding="utf-8")
    after = text[text.index("### Hugging Face peft"):]
    assert f"peftkb params qlora -m {PRESET}\npeftkb memory qlora -m {PRESET} --batch 1 --seq 512" in after


def _method_page(model, method) -> str:
    """One method page rendered alone (the same template and context as the full build)."""
    from peftkb.site.pages.method import _graph, _lineage
    from peftkb.site.search import search_width
    from peftkb.site.templating import make_environment, render_template

    env = make_environment(Path(__file__).resolve().parents[2] / "site" / "templates")
    return render_template(env, "method.md.j2", f"methods/{method.id}.md", m=method, model=model,
                           lineage=_lineage(_graph(model.catalog), method, model),
                           search_width=search_width(model.catalog), catalog=model.catalog)


def test_without_peft_the_page_shows_the_command_and_builds(monkeypatch, rendered):
    from peftkb.site.model import SiteModel

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails
    model = SiteModel(catalog=rendered.catalog, root=rendered.root)
    qlora = _methods(rendered.catalog)["qlora"]
    export = model.exports.peft(qlora)
    assert export.script is None and "peft" in export.reason
    text = _method_page(model, qlora)
    section = text[text.index("### Hugging Face peft"):]
    assert "peftkb export qlora &#45;&#45;to peft &#45;f python" in section
    assert "```python" not in section.split("###")[1]  # no partial snippet in its place


# -- measured evidence on method pages --------------------------------------------------------------
def test_method_pages_list_every_measurement_with_its_provenance(built_site, rendered):
    every = measurements(rendered.root, rendered.catalog)
    by_method: dict[str, list[Measurement]] = {}
    for m in every:
        by_method.setdefault(m.method, []).append(m)
    assert "peft-metamathqa" in {m.source for m in by_method["lora"]}
    assert any(m.source.startswith("peftkb-bench-") for m in by_method["lora"])  # our own runs, any profile
    for mid in ("lora", "ia3", "adalora", "bitfit"):
        page = _built(built_site, f"methods/{mid}.html")
        section = page[page.index('id="measured-evidence"'):page.index('id="hyperparameters"')]
        rows = re.findall(r"<tr>.*?</tr>", section, re.S)[1:]  # minus the heading row
        assert len(rows) == len(by_method[mid]), mid
        for run in by_method[mid]:
            row = next(r for r in rows if run.label in _visible(r))
            assert run.source in _visible(row) and run.model in _visible(row)
            assert f"{100 * run.accuracy:.1f} %" in _visible(row)
            assert f"{run.trainable_params:,}" in _visible(row)
            if run.provenance.startswith("https://"):
                assert f'href="{html.escape(run.provenance)}"' in row
            else:  # file:line of a committed result file, copied into the site and linked
                path, line = run.provenance.rsplit(":", 1)
                assert f"line {line}" in _visible(row)
                target = re.search(r'href="([^"]+)"', row).group(1)
                assert (built_site / "methods" / html.unescape(target)).resolve() == (built_site / path).resolve()
                assert (built_site / path).read_text(encoding="utf-8") == (rendered.root / path).read_text(encoding="utf-8")
    unmeasured = next(m.id for m in rendered.catalog.methods if m.id not in by_method)
    assert 'id="measured-evidence"' not in _built(built_site, f"methods/{unmeasured}.html")


def test_evidence_text_is_escaped_once(monkeypatch, rendered):
    from peftkb.site.evidence import Evidence
    from peftkb.site.model import SiteModel

    evil = "<img src=x onerror=alert(1)> | **bold** [x](javascript:alert(2))"
    run = Measurement(source="peft-metamathqa", method="lora", label=evil, accuracy=0.5, task=evil, model=evil,
                      trainable_params=10, peak_memory_bytes=2**30, memory_kind=evil, settings={"r": evil},
                      provenance="javascript:alert(3)")
    model = SiteModel(catalog=rendered.catalog, root=rendered.root)
    model.__dict__["evidence"] = Evidence(by_method={"lora": [run]}, groups=[], calc=None, files={})
    text = _method_page(model, _methods(rendered.catalog)["lora"])
    section = text[text.index("## Measured evidence"):text.index("## Hyperparameters")]
    row = next(line for line in section.splitlines() if "50.0" in html.unescape(line))
    assert "<img" not in row and "**" not in row and "javascript:" not in row and "](" not in row
    assert row.count(" | ") == 5  # six cells: no pipe from the data splits the row
    assert html.unescape(re.sub(r"<[^>]+>", "", row)).count(evil) == 3  # model, run, settings: as written
    assert "<img" not in section and "javascript:" not in section  # nor in the settings listed under the table
    assert html.unescape(section).count(evil) == 6  # ...where the task and memory kind are named once


# -- the Compare page -------------------------------------------------------------------------------
def _groups(root, catalog) -> dict[tuple[str, str, str], list[Measurement]]:
    out: dict[tuple[str, str, str], list[Measurement]] = {}
    for m in measurements(root, catalog):
        out.setdefault((m.source, m.model, m.task), []).append(m)
    return out


def test_compare_page_plots_every_setting_with_its_pareto_front(built_site, rendered):
    page = _built(built_site, "comparison.html")
    box = page[page.index("data-pk-evidence"):page.index('id="calculators-vs-peft"')]
    groups = _groups(rendered.root, rendered.catalog)
    sections = re.findall(r'<section class="pk-evidence-group" data-evidence-group="([^"]+)">(.*?)</section>', box, re.S)
    options = re.findall(r'<option value="([^"]+)"', box)
    assert len(sections) == len(groups) == len(options) >= 2
    assert options == [key for key, _ in sections]
    assert "peft-metamathqa" in sections[0][0]  # published runs first
    names = {m.id: m.name for m in rendered.catalog.methods}
    for (source, model_name, _task), points in groups.items():
        body = next(b for _, b in sections if html.escape(f"{source}: {model_name}") in b)
        svgs = re.findall(r"<svg.*?</svg>", body, re.S)
        assert len(svgs) == 2
        for svg, cost in zip(svgs, ("trainable_params", "peak_memory_bytes")):
            usable = [p for p in points if p.accuracy is not None and getattr(p, cost) is not None]
            front = pareto_front(points, cost=cost)
            assert len(re.findall(r'<circle class="pk-(?:run|front)"', svg)) == len(usable)
            highlighted = re.findall(r'<circle class="pk-front"[^>]*><title>([^<]*)</title>', svg)
            assert sorted(html.unescape(t).split(" (")[1].split("):")[0] for t in highlighted) == \
                sorted(p.label for p in front), (source, model_name, cost)
            # the front is what no other run beats: cheaper-or-equal and more accurate
            for p in front:
                assert not any(getattr(q, cost) <= getattr(p, cost) and q.accuracy > p.accuracy for q in usable)
            labels = [html.unescape(t) for t in re.findall(r'class="pk-front-label"[^>]*>([^<]*)<', svg)]
            assert labels == [names.get(p.method, p.method) for p in front]
        # the table under the plots lists each run on either front, with its result file
        fronts = {p.label for cost in ("trainable_params", "peak_memory_bytes") for p in pareto_front(points, cost=cost)}
        rows = re.findall(r"<tr><td>.*?</tr>", body, re.S)
        assert len(rows) == len(fronts)


def test_compare_page_publishes_the_calculator_check(built_site, rendered):
    data = json.loads((rendered.root / "benchmarks/results/calc_vs_peft.json").read_text(encoding="utf-8"))
    page = _built(built_site, "comparison.html")
    section = page[page.index('id="calculators-vs-peft"'):]
    seen = _visible(section)
    overall = data["summary"]["overall"]
    assert f"{overall['params_exact']} of {overall['runs']}" in seen
    assert f"{100 * overall['memory_median_abs_error']:.1f} %" in seen
    assert f"{100 * overall['memory_worst_abs_error']:.1f} %" in seen
    for mid, stats in data["summary"]["by_method"].items():
        row = next(r for r in re.findall(r"<tr>.*?</tr>", section, re.S) if f"methods/{mid}.html" in r)
        cells = [_visible(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        assert cells[1:3] == [str(stats["runs"]), f"{stats['params_exact']} of {stats['runs']}"], mid
        if stats["memory_worst_abs_error"] is not None:
            assert cells[4] == f"{100 * stats['memory_worst_abs_error']:.1f} %", mid
    for run in data["runs"]:
        if run["error"]:
            assert run["experiment"] in seen
    p = data["provenance"]
    assert f'href="{p["repository"]}/tree/{p["commit"]}/{p["path"]}"' in section
    assert (built_site / "benchmarks/results/calc_vs_peft.json").is_file()
    assert 'href="benchmarks/results/calc_vs_peft.json"' in section
