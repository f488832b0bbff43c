"""`docs build --site-url` takes only an http(s) URL (build_site's sitemap with it is tested in tests/site)."""
from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("url", ["ftp://example.org", "example.org", "https://", "javascript:alert(1)"])
def test_site_url_must_be_http(url, tmp_path):
    done = run_cli("docs", "build", "--site-url", url, "-o", str(tmp_path / "site"))
    assert done.returncode == 2 and "--site-url must be an http(s) URL" in done.stderr
    assert not (tmp_path / "site").exists()
