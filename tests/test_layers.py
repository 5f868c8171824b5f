"""The test layers keep their promises: every test has one, a unit test starts no process, and --layer selects by
the closest mark (a test marked integration in a unit module runs with the integration layer)."""
import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration  # runs pytest on a small suite; its unit tests must be free to fail

SUITE = '''
import subprocess
import sys
import pytest

pytestmark = pytest.mark.unit

def test_pure():
    assert 1 + 1 == 2

def test_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.integration
def test_may_start_one():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_a_unit_test_that_starts_a_process_fails_and_says_what_to_do(suite):
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*a unit test starts no process*mark this test integration*"])


def test_layer_selects_by_the_closest_mark(suite):
    suite.runpytest("--layer", "unit").assert_outcomes(passed=1, failed=1, deselected=1)
    suite.runpytest("--layer", "integration").assert_outcomes(passed=1, deselected=2)


def test_a_test_without_a_layer_stops_the_run_naming_it(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_bare="def test_no_layer():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tests without a layer*test_bare.py::test_no_layer*"])
