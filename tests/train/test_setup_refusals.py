"""Refusals before anything trains, each with its message: a batch the DDP processes cannot share, TensorBoard
without its package; and the stop-signal guard used off the main thread (where signals cannot be caught)."""
import signal
import sys
import threading

import pytest

from comhe.train import engine, setup, tracking
from comhe.train.distributed import DistContext
from run_helpers import small_cfg


def test_a_batch_the_processes_cannot_share_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        setup.prepare(small_cfg(tmp_path, batch_size=8), ctx=DistContext(rank=0, world_size=3))
    assert str(err.value) == "batch_size 8 is not divisible by the 3 processes"


def test_tensorboard_without_its_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # the import raises ImportError
    with pytest.raises(ValueError, match=r"^tensorboard=true needs the tensorboard package \(pip install "
                                         r"tensorboard\): "):
        tracking.TensorBoardTracker(tmp_path / "tb", start_iteration=0)
    assert not (tmp_path / "tb").exists()


def test_the_stop_guard_off_the_main_thread_installs_nothing_and_does_not_fail():
    before = {sig: signal.getsignal(sig) for sig in engine.STOP_SIGNALS}
    seen = []

    def body():
        with engine._StopRequest() as stop:
            seen.append((stop.requested, dict(stop._previous)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, {})]
    assert {sig: signal.getsignal(sig) for sig in engine.STOP_SIGNALS} == before
