"""The app starts and its home page explains the steps."""
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
