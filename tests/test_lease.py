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


@pytest.mark.parametrize("contents", ["[]", '{"token": "t", "host": "h", "pid": 1, "started": 0, "renewed": "soon"}',
                                      '{"token": "t", "host": "h", "pid": 1, "started": 0, "renewed": 1e400}',
                                      "{not json"])
def test_a_corrupt_lease_is_named_and_taken_over(tmp_path, contents):
    """A lease file no realfill run wrote (a list, a time that is not a number, an infinite time, not JSON)
    blocks nothing: it is named in a warning and taken over."""
    (tmp_path / LEASE).write_text(contents)
    with pytest.warns(UserWarning, match=f"^{tmp_path / LEASE}: not a realfill lease "):
        with OutputLease(str(tmp_path)) as lease:
            assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.record["token"]
    assert not (tmp_path / LEASE).exists()


def test_a_run_whose_lease_was_taken_over_or_removed_commits_nothing(tmp_path):
    """Fencing: every manifest commit checks the lease first; the run that lost it writes no part and no fold,
    and leaves the new holder's lease alone."""
    from test_manifest import KEY_A, rows

    from realfill.data import manifest
    from realfill.data.lease import LeaseLost

    out = str(tmp_path)
    with OutputLease(out):
        manifest.write_scene(out, *rows("s0", KEY_A))
        other = {"token": "other", "host": "elsewhere", "pid": 7, "started": time.time(), "renewed": time.time()}
        (tmp_path / LEASE).write_text(json.dumps(other))
        with pytest.raises(LeaseLost, match=r"lease was taken over by another run \(pid 7 on elsewhere, since .*; "
                                             r"it stops and writes nothing more, keeping what it recorded$"):
            manifest.write_scene(out, *rows("s1", KEY_A))
        with pytest.raises(LeaseLost):
            manifest.compact(out)
    assert json.loads((tmp_path / LEASE).read_text()) == other, "the new holder's lease stays"
    assert [path.name for path in (tmp_path / "manifest" / "_journal" / "scenes").iterdir()] == ["scene-s0.parquet"]
    assert not (tmp_path / "manifest" / "scenes").exists(), "no fold"
    with OutputLease(str(tmp_path / "deleted")):
        (tmp_path / "deleted" / LEASE).unlink()  # the output deleted under the run
        with pytest.raises(LeaseLost, match="this run's lease is gone"):
            manifest.write_scene(str(tmp_path / "deleted"), *rows("s0", KEY_A))


PAUSED_RUN = """
import sys, time
from realfill.data import manifest
from realfill.data.lease import LeaseLost, OutputLease
from test_manifest import KEY_A, rows

out = sys.argv[1]
with OutputLease(out, stale_s=1.0, heartbeat_s=0.2):
    print("leased", flush=True)
    sys.stdin.readline()  # paused (SIGSTOP) meanwhile, then resumed
    try:
        manifest.write_scene(out, *rows("late", KEY_A))
    except LeaseLost as exc:
        print("lost:", exc, flush=True)
"""


def test_a_paused_run_that_lost_its_lease_writes_nothing_when_it_resumes(tmp_path):
    """A run stopped (SIGSTOP) past its lease's staleness, taken over by a second run, then resumed."""
    import os
    import signal
    from pathlib import Path

    paused = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent)
    assert paused.stdout.readline().strip() == "leased"
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while True:  # the second run waits for the first's lease to go stale, then takes over
            try:
                second = OutputLease(str(tmp_path), stale_s=1.0)
                second.acquire()
                break
            except OutputBusy:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    output, _ = paused.communicate("go\n", timeout=60)
    assert output.startswith("lost: ") and "lease was taken over by another run" in output, output
    assert json.loads((tmp_path / LEASE).read_text())["token"] == second.record["token"]
    assert not (tmp_path / "manifest").exists(), "the paused run recorded nothing after it resumed"
