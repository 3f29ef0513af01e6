"""The CPU kernels' thread pool (csrc/ops/cpu/parallel_tasks.h): who runs which task, thread
counts, nesting, exceptions, a helper that arrives late, fork, concurrent callers, and every CPU
op's results bitwise identical for every thread count.

The probes (``detr_ops._C._parallel``) run jobs whose tasks sleep, so that helpers get scheduled
even on a loaded machine and the tests do not depend on timing except where timing is the point
(a late helper must not delay the caller; bounds there are generous).
"""
import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager

import pytest
import torch

import detr_ops
from detr_ops import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
probe = _extension.load()._parallel


@contextmanager
def num_threads(n):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_until_helpers_join(num_tasks=40, sleep_us=2000, attempts=5, job=probe.run_tasks, **kw):
    """Runs a probe job (`job`, probe.run_tasks by default) until a helper took part in one (a
    loaded machine may not schedule a helper within one job); returns that job's record."""
    for _ in range(attempts):
        before = probe.tasks_run_by_helpers()
        record = job(num_tasks, sleep_us, **kw)
        if probe.tasks_run_by_helpers() > before:
            return record
    pytest.fail(f"no helper thread ran a task in {attempts} jobs of {num_tasks} x {sleep_us} us")


def caller_number():
    return probe.thread_number()


def test_every_task_runs_once_and_states_are_per_thread():
    with num_threads(3):
        me = caller_number()
        record = run_until_helpers_join()
    assert len(record) == 40
    assert all(len(r) == 2 for r in record), "each task ran exactly once"
    threads = {r[0] for r in record}
    assert me in threads and len(threads) >= 2
    # one State per thread, passed to all of its tasks in the order the thread ran them
    for t in threads:
        seen = sorted(r[1] for r in record if r[0] == t)
        assert seen == list(range(len(seen)))


def test_one_thread_runs_everything_on_the_caller():
    with num_threads(1):
        me = caller_number()
        before = probe.tasks_run_by_helpers()
        record = probe.run_tasks(20, 200)
        assert probe.tasks_run_by_helpers() == before
    assert [r[0] for r in record] == [me] * 20
    assert [r[1] for r in record] == list(range(20))


def test_parallel_false_runs_serially():
    with num_threads(4):
        me = caller_number()
        before = probe.tasks_run_by_helpers()
        record = probe.run_tasks(20, 200, parallel=False)
        assert probe.tasks_run_by_helpers() == before
    assert {r[0] for r in record} == {me}


def test_thread_count_is_respected():
    # torch.set_num_threads(2): the caller and at most one helper take part in a job, although the
    # pool already has more helper threads from a job with 4.
    with num_threads(4):
        run_until_helpers_join()
    with num_threads(2):
        for _ in range(3):
            record = run_until_helpers_join(num_tasks=30)
            assert len({r[0] for r in record}) <= 2


def test_empty_and_single_task_jobs():
    with num_threads(2):
        assert probe.run_tasks(0) == []
        assert len(probe.run_tasks(1)) == 1


def test_nested_calls_run_serially_on_the_task_thread():
    with num_threads(3):
        record = run_until_helpers_join(num_tasks=30, nested=True)
    for r in record:
        outer, inner = r[0], r[2:]
        assert inner == [outer] * 4, f"inner tasks ran on {inner}, the outer task on {outer}"


@pytest.mark.parametrize("parallel", [True, False])
def test_aten_ops_inside_tasks_run_serially(parallel):
    """An ATen op called from a task (the softmax matching cost calls ATen's softmax kernel) sees
    one thread, on the caller and on helpers, and so never opens an OpenMP team of its own; the
    caller's thread count is back afterwards."""
    with num_threads(2):
        me = caller_number()
        if parallel:
            record = run_until_helpers_join(30, 1000, job=probe.aten_threads_in_tasks)
        else:
            record = probe.aten_threads_in_tasks(30, 1000, parallel=False)
        assert torch.get_num_threads() == 2
    assert len(record) == 30 and all(n == 1 for _, n in record), record
    threads = {t for t, _ in record}
    assert me in threads and (len(threads) == 2 if parallel else threads == {me})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scheduling policies of Linux threads")
def test_helpers_run_as_sched_batch():
    """Helper threads use SCHED_BATCH (no wake-up preemption: a woken helper never pushes the caller
    off its core on a busy machine); the caller's own policy is untouched."""
    allowed = []

    def try_batch():  # on a thread of its own (policies are per thread), which then ends
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            allowed.append(True)
        except OSError:
            allowed.append(False)

    probe_thread = threading.Thread(target=try_batch)
    probe_thread.start()
    probe_thread.join()
    if not allowed[0]:
        pytest.skip("this environment refuses SCHED_BATCH (the pool then keeps the default policy)")
    with num_threads(2):
        run_until_helpers_join()

    def policy(tid):  # field 41 of /proc/<pid>/task/<tid>/stat; the name in field 2 may hold spaces
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[38])

    policies = [policy(tid) for tid in os.listdir("/proc/self/task")]
    batch = sum(p == os.SCHED_BATCH for p in policies)
    assert 1 <= batch <= probe.helper_threads_started(), policies
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.parametrize("throw_at", [0, 7, 39])
def test_exception_in_a_task_reaches_the_caller(throw_at):
    with num_threads(2):
        with pytest.raises(RuntimeError, match=f"probe task {throw_at} failed"):
            probe.run_tasks(40, 500, throw_at=throw_at)
        # the pool is free again and still works, helpers included
        record = run_until_helpers_join()
    assert len(record) == 40 and all(len(r) == 2 for r in record)


def test_caller_never_waits_for_a_late_helper():
    # Helpers that take a second to show up (as when other processes hold the cores) must not
    # delay the call: the caller runs every task itself and returns.
    delay_s = 1.0
    with num_threads(2):
        run_until_helpers_join()  # helper threads exist and are awake
        probe.set_helper_delay(int(delay_s * 1e6))
        try:
            me = caller_number()
            start = time.monotonic()
            record = probe.run_tasks(10, 1000)
            elapsed = time.monotonic() - start
        finally:
            probe.set_helper_delay(0)
            time.sleep(delay_s + 0.2)  # let the delayed helpers go back to sleep
    assert {r[0] for r in record} == {me}
    assert elapsed < delay_s / 2, f"the call took {elapsed:.3f} s: it waited for a helper"


def test_concurrent_callers():
    # Two Python threads call at once (the probe releases the GIL): one gets the pool, the other
    # runs its tasks itself; both complete every task.
    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = probe.run_tasks(30, 1000)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    with num_threads(3):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    for r in results:
        assert r is not None and len(r) == 30 and all(len(x) == 2 for x in r)


@pytest.mark.parametrize("begin,end,grain", [(0, 1000, 1), (5, 1005, 64), (0, 100, 100), (0, 101, 100),
                                             (-50, 50, 7), (3, 3, 1), (0, 1, 1)])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_parallel_for_chunks_cover_the_range(begin, end, grain, threads):
    with num_threads(threads):
        chunks = probe.chunks(begin, end, grain)
    if begin >= end:
        assert chunks == []
        return
    assert chunks[0][0] == begin and chunks[-1][1] == end
    for (b0, e0), (b1, _) in zip(chunks, chunks[1:]):
        assert e0 == b1
    assert all(e - b >= min(grain, end - begin) for b, e in chunks[:-1])
    if end - begin <= grain or threads == 1:
        assert chunks == [(begin, end)]  # at::parallel_for's rule: no threads for one grain


# ---- fork ---------------------------------------------------------------------------------------

FORK_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import torch
    import detr_ops
    from detr_ops import _extension
    probe = _extension.load()._parallel
    torch.set_num_threads(2)

    def helpers_join():
        for _ in range(5):
            before = probe.tasks_run_by_helpers()
            record = probe.run_tasks(40, 2000)
            assert len(record) == 40
            if probe.tasks_run_by_helpers() > before:
                return True
        return False

    a = torch.rand(700, 4); a[:, 2:] += a[:, :2]
    b = torch.rand(600, 4); b[:, 2:] += b[:, :2]
    expected = detr_ops.generalized_box_iou(a, b)
    assert helpers_join(), "parent: helpers never joined"

    # fork while another thread of the parent is in the middle of a job
    busy = threading.Thread(target=probe.run_tasks, args=(200, 2000))
    busy.start()
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(2)
            ok = torch.equal(detr_ops.generalized_box_iou(a, b), expected)
            ok = ok and helpers_join()  # a fresh pool with helper threads of its own
            os._exit(0 if ok else 3)
        except BaseException as e:
            print("child failed:", repr(e), file=sys.stderr, flush=True)
            os._exit(4)
    busy.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert torch.equal(detr_ops.generalized_box_iou(a, b), expected)
    print("fork ok")
""")


def _run_script(script, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"deadlock: no result within {timeout} s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_fork_after_the_pool_started():
    assert "fork ok" in _run_script(FORK_SCRIPT)


DATALOADER_SCRIPT = textwrap.dedent("""
    import torch
    import detr_ops
    from torch.utils.data import DataLoader, Dataset

    class Boxes(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            torch.set_num_threads(2)  # workers start with 1 thread: ask for the pool explicitly
            g = torch.Generator().manual_seed(i)
            a = torch.rand(500, 4, generator=g); a[:, 2:] += a[:, :2]
            return detr_ops.generalized_box_iou(a, a)

    torch.set_num_threads(2)
    expected = [Boxes()[i] for i in range(4)]  # the parent's pool starts here
    loader = DataLoader(Boxes(), batch_size=None, num_workers=2,
                        multiprocessing_context="fork", timeout=120)
    got = list(loader)
    assert all(torch.equal(x, y) for x, y in zip(got, expected))
    print("dataloader ok")
""")


def test_dataloader_workers_forked_after_the_pool_started():
    assert "dataloader ok" in _run_script(DATALOADER_SCRIPT)


# ---- every CPU op: bitwise identical for every thread count -------------------------------------

def _boxes(n, generator):
    b = torch.rand(n, 4, generator=generator, dtype=torch.float64).float()
    b[:, 2:] += b[:, :2]
    return b


def _giou_pairwise():
    g = torch.Generator().manual_seed(1)
    a = _boxes(900, g).requires_grad_()
    b = _boxes(300, g).requires_grad_()
    out = detr_ops.generalized_box_iou(a, b)
    return [out.detach(), *torch.autograd.grad(out, (a, b), torch.randn(out.shape, generator=g))]


def _iou_pairwise_batched():
    g = torch.Generator().manual_seed(2)
    a = _boxes(3 * 500, g).view(3, 500, 4).requires_grad_()
    b = _boxes(3 * 200, g).view(3, 200, 4).requires_grad_()
    out = detr_ops.box_iou(a, b)
    return [out.detach(), *torch.autograd.grad(out, (a, b), torch.randn(out.shape, generator=g))]


def _giou_loss():
    g = torch.Generator().manual_seed(3)
    a = _boxes(200_000, g).requires_grad_()
    b = _boxes(200_000, g).requires_grad_()
    out = detr_ops.generalized_box_iou_loss(a, b)
    return [out.detach(), *torch.autograd.grad(out, (a, b), torch.randn(out.shape, generator=g))]


def _matching_cost(focal):
    def run():
        g = torch.Generator().manual_seed(4)
        B, Q, K, T = 4, 300, 92, 20
        logits = torch.randn(B, Q, K, generator=g)
        boxes = torch.rand(B, Q, 4, generator=g) * 0.5 + 0.25
        labels = torch.randint(0, K, (B, T), generator=g)
        tboxes = torch.rand(B, T, 4, generator=g) * 0.5 + 0.25
        counts = torch.tensor([20, 3, 0, 11])
        return [detr_ops.matching_cost(logits, boxes, labels, tboxes, counts, 1.0, 5.0, 2.0, focal=focal)]
    return run


def _lsa_batched():
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(16, 300, 40, generator=g)
    counts = torch.randint(0, 41, (16,), generator=g)
    col_for_row, status = detr_ops.batched_linear_sum_assignment(cost, num_cols=counts)
    return [col_for_row, status]


def _msda():
    g = torch.Generator().manual_seed(6)
    levels = torch.tensor([[16, 16], [8, 8], [4, 4]])
    starts = torch.tensor([0, 256, 320])
    N, Lq, M, D, L, P = 2, 100, 4, 32, 3, 4
    value = torch.randn(N, 336, M, D, generator=g).requires_grad_()
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g).requires_grad_()
    w = torch.rand(N, Lq, M, L, P, generator=g).requires_grad_()
    out = detr_ops.ms_deform_attn(value, levels, starts, loc, w)
    return [out.detach(), *torch.autograd.grad(out, (value, loc, w), torch.randn(out.shape, generator=g))]


OPS = {"giou_pairwise": _giou_pairwise, "iou_pairwise_batched": _iou_pairwise_batched, "giou_loss": _giou_loss,
       "matching_cost_softmax": _matching_cost(False), "matching_cost_focal": _matching_cost(True),
       "batched_linear_sum_assignment": _lsa_batched, "ms_deform_attn": _msda}


@pytest.mark.parametrize("op", list(OPS))
def test_results_are_bitwise_identical_for_every_thread_count(op):
    results = {}
    for n in (1, 2, 3, 4):
        with num_threads(n):
            results[n] = OPS[op]()
    for n in (2, 3, 4):
        for i, (x, y) in enumerate(zip(results[1], results[n])):
            assert torch.equal(x, y), f"{op}: output {i} differs between 1 and {n} threads"
