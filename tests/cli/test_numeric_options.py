"""Property-based tests (hypothesis) of the read commands' numeric options and `docs serve`'s port.

Whatever number or text is given, the CLI answers with exit 0, 1 (not found) or 2 (bad input), never a
traceback or an internal error; and what it answers with 0 is right (every listed year in range, at
most --limit hits). The CLI runs in-process through its console entry point, so hundreds of cases take
seconds.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import assert_answered as answered, run_main as invoke

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Anything a user might type where a number is expected.
NUMBERISH = st.one_of(
    st.integers(min_value=-10**40, max_value=10**40).map(str),
    st.integers(min_value=1900, max_value=2030).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e3", "2021.0", "0x7e5", "+2021", "٢٠٢١", "2_021", "--", "-0",
                     "9" * 5000, "2021 ", "\x00"]),
    st.text(max_size=12),
)


@SETTINGS
@given(since=NUMBERISH, until=NUMBERISH)
def test_list_year_bounds(since, until):
    code, out, err = invoke("list", "--since", since, "--until", until, "--format", "json")
    answered(code, out, err)
    if code == 0:
        lo, hi = int(since), int(until)
        assert lo <= hi  # a contradictory range is bad input, never an empty answer
        assert all(lo <= row["year"] <= hi for row in json.loads(out))


@SETTINGS
@given(since=st.integers(min_value=1990, max_value=2030), until=st.integers(min_value=1990, max_value=2030))
def test_list_year_bounds_select_exactly_the_years_in_range(since, until):
    code, out, err = invoke("list", "--since", str(since), "--until", str(until), "--format", "json")
    answered(code, out, err)
    if since > until:
        assert code == 2 and "--since" in err
        return
    assert code == 0
    assert {r["id"] for r in json.loads(out)} == {m.id for m in _every() if since <= m.year <= until}


def _every():
    from peftkb.cli.common import index

    return index().methods


@SETTINGS
@given(limit=NUMBERISH)
def test_search_limit(limit):
    code, out, err = invoke("search", "adapter", "--limit", limit, "--format", "json")
    answered(code, out, err)
    if code == 0:
        assert 1 <= len(json.loads(out)) <= int(limit)


@SETTINGS
@given(query=st.text(max_size=400))
def test_search_any_text(query):
    if query.startswith("-"):  # an option to Click, not a query: covered by the option tests
        query = "x" + query
    answered(*invoke("search", query, "--format", "ids"))


@SETTINGS
@given(port=NUMBERISH, host=st.sampled_from(["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "", "a b"]))
def test_docs_serve_port(monkeypatch, port, host):
    served = []
    monkeypatch.setattr("peftkb.site.render.serve_site", lambda **kw: served.append(kw["dev_addr"]))
    code, out, err = invoke("docs", "serve", "-a", f"{host}:{port}")
    answered(code, out, err)
    if code == 0:  # handed on only when it is a host and a port that can be listened on
        assert served and 1 <= int(port) <= 65535 and host.strip() and " " not in host
    else:
        assert not served and "--dev-addr" in err
