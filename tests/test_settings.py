"""Settings from the environment: the cores the app may use."""
import os

import pytest

from core import settings
from core.jobs.registry import JobRegistry

pytestmark = pytest.mark.unit


def test_cores_default_to_those_the_process_may_run_on(monkeypatch):
    monkeypatch.delenv("FTLAB_CPUS", raising=False)
    assert settings.cpus() == len(os.sched_getaffinity(0))


def test_a_lab_gives_the_app_a_share_of_the_machine_and_each_job_a_share_of_that(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_CPUS", "6")
    monkeypatch.setenv("FTLAB_MAX_JOBS", "3")
    assert settings.cpus() == 6
    assert JobRegistry(tmp_path / "runs").threads == 2


@pytest.mark.parametrize("value", ["two", "1.5"])
def test_a_setting_that_is_not_a_number_says_which_and_why(monkeypatch, value):
    monkeypatch.setenv("FTLAB_CPUS", value)
    with pytest.raises(ValueError, match=f"FTLAB_CPUS='{value}' is not a whole number of cores"):
        settings.cpus()
