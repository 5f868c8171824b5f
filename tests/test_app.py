"""The app starts and its home page explains the steps."""
import os
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT

pytestmark = pytest.mark.integration


def test_home_page_explains_every_step():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "Fine-Tune Lab"
    headings = " ".join(m.value for m in at.markdown)
    for step in ("Upload", "Model", "Train", "Results", "Download"):
        assert step in headings


def test_a_fresh_server_shows_home_without_importing_torch(tmp_path):
    """The first page after a (re)start appears in about a second: torch (several seconds to import) waits for a
    page or a job that needs it."""
    code = ("import sys; from streamlit.testing.v1 import AppTest; "
            "at = AppTest.from_file('app.py', default_timeout=60).run(); "
            "print(not at.exception and at.title[0].value, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=os.environ | {"FTLAB_HOME": str(tmp_path / "ws")})
    assert out.stdout.splitlines()[-1] == "Fine-Tune Lab False", (out.stdout, out.stderr[-2000:])
