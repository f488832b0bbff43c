"""No traceback, ever, for bad input: each case is one clear line on stderr and exit 2 (1 for not found).

An unexpected exception (a bug) is one line naming it, with a hint to re-run with --debug, and exit 3,
so a crash can never look like "not found" or "bad input".
"""
from __future__ import annotations

import pytest

import peftkb.cli as cli
from peftkb.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOT_FOUND, CatalogError, NotFoundError, Problem, UsageError
from tests.conftest import run_cli


def no_traceback(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


# -- the last-resort handler (peftkb.cli.main) -----------------------------------------------------
def _main_with(monkeypatch, capsys, exc: BaseException, *argv: str) -> tuple[int, str]:
    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr("sys.argv", ["peftkb", *argv])
    monkeypatch.delenv("PEFTKB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


def test_an_unexpected_exception_is_one_line_and_exit_3(monkeypatch, capsys):
    code, err = _main_with(monkeypatch, capsys, ZeroDivisionError("division by zero"), "list")
    assert code == EXIT_INTERNAL == 3
    assert err.count("\n") == 1
    assert "ZeroDivisionError: division by zero" in err and "--debug" in err


def test_with_debug_the_traceback_is_shown(monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr("sys.argv", ["peftkb", "--debug", "list"])
    with pytest.raises(ZeroDivisionError):
        cli.main()


@pytest.mark.parametrize("exc, code", [
    (NotFoundError("no method 'x'"), EXIT_NOT_FOUND),
    (UsageError("bad"), EXIT_BAD_INPUT),
    (CatalogError([Problem("catalog/x.yaml", 3, 1, "year", "bad year")]), EXIT_BAD_INPUT),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), EXIT_INTERNAL),
    (RecursionError("maximum recursion depth exceeded"), EXIT_INTERNAL),
])
def test_expected_errors_keep_their_codes_and_bugs_get_3(monkeypatch, capsys, exc, code):
    got, err = _main_with(monkeypatch, capsys, exc, "list")
    assert got == code, err
    assert "Traceback" not in err


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    code, err = _main_with(monkeypatch, capsys, KeyboardInterrupt(), "list")
    assert code == 130 and err == ""


def test_debug_is_a_root_option():
    result = run_cli("--debug", "show", "lora", "-f", "ids")
    assert no_traceback(result, 0) == "" and result.stdout.strip() == "lora"


# -- the work per search query is bounded --------------------------------------------------------
def test_a_100_kb_search_query_is_refused_at_once():
    result = run_cli("search", "low rank " * 11_400)
    err = no_traceback(result, 2)
    assert "the limit is 300" in err and err.count("\n") == 1


def test_a_query_of_many_distinct_words_is_refused():
    from peftkb import query

    words = " ".join(f"w{i}" for i in range(query.MAX_QUERY_TERMS + 1))
    assert len(words) <= query.MAX_QUERY_CHARS
    assert f"the limit is {query.MAX_QUERY_TERMS}" in no_traceback(run_cli("search", words), 2)


def test_a_long_paper_title_is_still_a_query():
    title = "Parameter-Efficient Fine-Tuning Methods for Pretrained Language Models: A Critical Review and Assessment"
    result = run_cli("search", title, "-f", "ids")
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr


def test_a_closed_pipe_is_not_an_error():
    import subprocess
    import sys

    # `peftkb list | head -1`: the reader goes away; the writer exits 0 without a traceback
    proc = subprocess.Popen([sys.executable, "-m", "peftkb", "list", "-f", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


# -- coverage --survey-file: the file is checked at the command's boundary ---------------------------
@pytest.mark.parametrize("content, says", [
    (b"- a\n- b\n", "expected a mapping with a list `taxonomy`"),
    (bytes(range(256)) * 4, "not valid UTF-8"),
    (b"taxonomy: ok\n\x07", "U+0007"),
    (b"taxonomy:\n- id: x\n  methods:\n  - aka: [y]\n", "taxonomy[0].methods[0]: each method must be a mapping"),
    (b"taxonomy:\n- id: x\n  subcategories: {a: 1}\n", "taxonomy[0].subcategories: must be a list"),
    (b"taxonomy:\n- name: no id\n", "taxonomy[0]: each category must be a mapping with a string `id`"),
    (b"taxonomy: []\ntaxonomy: []\n", "duplicate key 'taxonomy'"),
    (b"# " + b"x" * 1_200_000, "the limit is 1,000,000"),
])
def test_a_bad_survey_file_is_one_line_and_exit_2(tmp_path, content, says):
    path = tmp_path / "survey.yaml"
    path.write_bytes(content)
    err = no_traceback(run_cli("coverage", "--against", "survey", "--survey-file", str(path)), 2)
    assert says in err and err.startswith(f"error: {path}") and err.count("\n") == 1, err


@pytest.mark.parametrize("special", ["/dev/null", "/dev/zero"])
def test_a_survey_file_that_is_not_a_regular_file(special):
    err = no_traceback(run_cli("coverage", "--against", "survey", "--survey-file", special), 2)
    assert err.count("\n") == 1


# -- the validator goes on past a file it cannot read as text -------------------------------------------
def test_validate_reports_a_binary_file_and_the_other_files_problems(kb):
    (kb.root / "catalog" / "lora.yaml").write_bytes(b"id: lora\nname: Lo\x00RA\n")
    (kb.root / "catalog" / "bad-utf8.yaml").write_bytes(b"id: bad-utf8\nname: \xff\n")
    kb.edit("ia3.yaml", "year: 2022", "year: 1700")
    err = no_traceback(run_cli("validate", root=kb.root), 2)
    assert "catalog/lora.yaml:2:9: character U+0000 is not allowed" in err
    assert "catalog/bad-utf8.yaml:2:7: not valid UTF-8 (byte 0xff)" in err
    assert "catalog/ia3.yaml:" in err and "1700" in err


@pytest.mark.parametrize("root, says", [("/", "not a knowledge base"), ("", "does not exist"),
                                        ("/no/such/folder", "does not exist")])
def test_a_root_that_is_not_a_knowledge_base(root, says):
    err = no_traceback(run_cli("--root", root, "list"), 2)
    assert says in err
