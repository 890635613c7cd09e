"""Self-tests of the emulation's warp collectives and asynchronous copies
(tests/emu/emu_selftest.cpp): correct shuffles give the right values, and a
planted missing wait, mask mismatch, source lane outside the mask and lane
that never arrives are each reported, within a bounded time; a read just
past the end or just before the start of a block's shared memory faults on
a guard page and is reported, as a GPU faults there. The correct kernels
also run under ThreadSanitizer.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "emu"))
import emu  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

SELFTEST = os.path.join(emu.HERE, "emu_selftest.cpp")
WARP_TIMEOUT_MS = 500


def _build(tmp_path_factory, name, flags):
    out = emu.build_dir(tmp_path_factory)
    try:
        return emu.build(out, extra_flags=flags, output=name, main=SELFTEST)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{name} build failed:\n{exc.stderr}")


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    return _build(tmp_path_factory, "emu_selftest", ("-O2",))


@pytest.fixture(scope="module")
def selftest_tsan(tmp_path_factory):
    return _build(tmp_path_factory, "emu_selftest_tsan",
                  ("-O1", "-g", "-fsanitize=thread"))


def run(exe, what):
    """Runs one self-test; returns (exit status, output, seconds it took)."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 report_signal_unsafe=0")
    proc = subprocess.run([exe, what, str(WARP_TIMEOUT_MS)], capture_output=True,
                          text=True, timeout=120, env=env)
    text = proc.stdout + proc.stderr
    seconds = float(re.search(r"seconds ([0-9.]+)", text).group(1))
    return proc.returncode, text, seconds


def test_warp_shuffles_give_the_right_values(selftest):
    rc, text, _ = run(selftest, "shuffles")
    assert rc == 0 and "value shuffles right (0 mismatches)" in text, text


def test_async_copies_land_at_the_wait(selftest):
    rc, text, _ = run(selftest, "async")
    assert rc == 0 and "value out[0] 25; 0 of 64 wrong" in text, text


def test_shallow_wait_reads_poison(selftest):
    """irnn_cp_async_wait<1> leaves the second group pending; reading it
    sees the 0xFF fill (NaN), on every thread."""
    rc, text, _ = run(selftest, "shallow_wait")
    assert rc == 1 and "value out[0] -nan; 64 of 64 wrong" in text, text


def test_missing_wait_reads_poison_and_is_reported(selftest):
    rc, text, _ = run(selftest, "missing_wait")
    assert rc == 1 and "value out[0] -nan" in text, text
    assert "ended with 2 asynchronous copies never waited for" in text, text


def test_mask_mismatch_is_reported(selftest):
    # Lane 3 of every warp mismatches. Whichever warp meets it first reports
    # it, from lane 3 (its mask differs from the open collective's) or from
    # a lane whose collective lane 3 opened with its own mask: the OS
    # threads' timing decides which. Either way the error names lane 3 and
    # its mask.
    rc, text, _ = run(selftest, "mask_mismatch")
    assert rc == 1 and "mask or operation mismatch" in text, text
    assert re.search(r"error: emu: block 0: warp \d+ lane 3 "
                     r"__shfl_xor_sync\(mask 0x7fffffff\)", text) or \
        re.search(r"error: emu: block 0: warp \d+ lane \d+ "
                  r"__shfl_xor_sync\(mask 0xffffffff\): .* is expected in "
                  r"__shfl_xor_sync\(mask 0x7fffffff\) of lanes \{3\}",
                  text), text


def test_source_lane_outside_the_mask_is_reported(selftest):
    rc, text, _ = run(selftest, "source_outside")
    assert rc == 1, text
    assert ("__shfl_sync(mask 0x0000ffff): source lane 20 is not in the mask"
            in text), text


def test_lane_that_never_arrives_is_reported_in_bounded_time(selftest):
    rc, text, seconds = run(selftest, "lane_missing")
    assert rc == 1, text
    assert re.search(r"warp [01] lane \d+ __shfl_down_sync\(mask 0xffffffff\): "
                     r"timed out after 500 ms waiting for the other lanes: "
                     r"lanes \{5\} never arrived", text), text
    assert WARP_TIMEOUT_MS / 1000 <= seconds < 5, text


def test_shared_memory_read_in_bounds(selftest):
    rc, text, _ = run(selftest, "smem_in_bounds")
    # Nothing wrote the memory: every read sees the 0xFF fill.
    assert rc == 0 and "value 64 of 64 NaN" in text, text


@pytest.mark.parametrize("what, where", [
    ("smem_past_end", r"at byte 256 of block \d's \(past its end\); thread 31"),
    ("smem_before_start", r"at byte -4 of block \d's \(before its start\); thread 0")])
def test_shared_memory_read_out_of_bounds_faults(selftest, what, where):
    """The process ends on the guard page (a signal, no result printed),
    after the handler names the block, the byte and the thread."""
    proc = subprocess.run([selftest, what], capture_output=True, text=True,
                          timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode < 0 or proc.returncode > 128, text
    assert "value" not in text, text
    assert re.search(r"emu: a shared memory access outside the block's dynamic "
                     r"shared memory of 256 bytes, " + where +
                     "; a GPU faults there", text), text


@pytest.mark.parametrize("what", ["shuffles", "async", "smem_in_bounds"])
def test_tsan_collectives_race_free(selftest_tsan, what):
    rc, text, _ = run(selftest_tsan, what)
    assert "WARNING: ThreadSanitizer" not in text, text[-6000:]
    assert rc == 0, text[-3000:]
