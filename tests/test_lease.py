"""One run per output: a second run is refused clearly, a dead run's lease is taken over."""

import json
import subprocess
import sys
import time

import pytest

from realfill.data.lease import LEASE, OutputBusy, OutputLease


@pytest.mark.parametrize("out", ["local", "memory://lease-test/out"])
def test_a_held_output_refuses_a_second_run_and_is_free_after(tmp_path, out):
    out = str(tmp_path / "out") if out == "local" else out
    with OutputLease(out):
        with pytest.raises(OutputBusy, match=r"in use by another realfill run \(pid \d+ on .*, since "):
            OutputLease(out).acquire()
    with OutputLease(out):
        pass


def test_a_dead_runs_lease_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"token": "t", "host": __import__("socket").gethostname(), "pid": int(dead.stdout), "started": 0,
              "renewed": time.time()}
    (tmp_path / LEASE).write_text(json.dumps(record))
    with OutputLease(str(tmp_path)) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.record["token"]
    assert not (tmp_path / LEASE).exists()
    (tmp_path / LEASE).write_text(json.dumps({**record, "host": "elsewhere", "renewed": time.time() - 600}))
    with OutputLease(str(tmp_path), stale_s=120):
        pass
    (tmp_path / LEASE).write_text(json.dumps({**record, "host": "elsewhere", "renewed": time.time()}))
    with pytest.raises(OutputBusy):
        OutputLease(str(tmp_path)).acquire()


def test_the_lease_is_renewed_while_the_run_lives(tmp_path):
    with OutputLease(str(tmp_path), heartbeat_s=0.05) as lease:
        first = json.loads((tmp_path / LEASE).read_text())["renewed"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LEASE).read_text())["renewed"] > first
        assert lease.record["token"] == json.loads((tmp_path / LEASE).read_text())["token"]


def test_an_output_that_cannot_hold_a_run_fails_at_start(tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(NotADirectoryError, match=f"^{out}: is a file, not an output folder$"):
            OutputLease(str(out)).acquire()
