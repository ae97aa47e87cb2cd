"""Session guard: the tests write only under pytest's temporary folders. A test that forgets to point a data root
at ``tmp_path`` would fill the checkout's default data folder (``./data``) with synthetic data sets; this fails the
session when the top level of ``./data`` changed while the tests ran."""
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
_KEY = pytest.StashKey()


def _listing():
    return sorted(p.name for p in DATA.iterdir()) if DATA.is_dir() else None


def pytest_sessionstart(session):
    session.config.stash[_KEY] = _listing()


def pytest_sessionfinish(session, exitstatus):
    before, after = session.config.stash[_KEY], _listing()
    if after != before:
        new = sorted(set(after or ()) - set(before or ()))
        message = (f"error: the tests wrote into the checkout's {DATA} (new: {', '.join(new) or 'entries changed'}); "
                   "point the test's data root (data_root=, COMHE_DATA) at tmp_path")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            print(message)
        else:
            reporter.write("\n")  # after the progress line, which has no newline yet
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
