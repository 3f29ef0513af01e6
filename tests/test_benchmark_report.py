"""The benchmark report and comparison logic on a small synthetic pytest-benchmark JSON: no timing,
no extension calls, so it runs in well under a second in CI."""
import json

import pytest

from benchmarks import compare, report, run, table
from benchmarks.results import format_bytes, format_time, rows_from_data


def _bench(op, case, pass_, impl, role, backend, median, **extra):
    info = dict(op=op, case=case, pass_=pass_, impl=impl, role=role, backend=backend, device="cpu", **extra)
    return {"name": f"test[{impl}-{case}]", "fullname": f"bench.py::test[{impl}-{case}]",
            "group": f"{op} | {case} | {pass_}", "stats": {"median": median, "rounds": 5}, "extra_info": info}


def _data(scale=1.0):
    b = [
        _bench("giou_pairwise", "7200x87", "fwd", "torch formula", "baseline", "", 0.010 * scale),
        _bench("giou_pairwise", "7200x87", "fwd", "detr_ops", "detr_ops", "native", 0.001 * scale),
        _bench("linear_sum_assignment", "900x100", "fwd", "scipy", "baseline", "", 0.004),
        _bench("linear_sum_assignment", "900x100", "fwd", "lap", "baseline", "", 0.002),
        _bench("linear_sum_assignment", "900x100", "fwd", "detr_ops", "detr_ops", "native", 0.001),
        _bench("linear_sum_assignment", "B16 Q100 T120", "fwd", "scipy-loop", "baseline", "", 0.008),
        _bench("linear_sum_assignment", "B16 Q100 T120", "fwd", "detr_ops", "detr_ops", "native", 0.004),
        _bench("linear_sum_assignment", "B16 Q100 T120", "fwd", "detr_ops-op", "detr_ops", "native", 0.002),
        _bench("ms_deform_attn", "dec N=2", "fwd", "grid_sample", "baseline", "", 0.2, peak_bytes=3 << 20),
        _bench("ms_deform_attn", "dec N=2", "fwd", "detr_ops", "detr_ops", "native", 0.02, peak_bytes=1 << 20),
        # GPU row: the CUDA-event median wins over pytest-benchmark's single host-timed round.
        _bench("ms_deform_attn", "dec N=2", "fwd", "detr_ops-triton", "detr_ops", "triton", 9.0,
               gpu_median_s=0.01, peak_bytes=2 << 20),
        {"name": "test_untagged", "fullname": "bench.py::test_untagged", "stats": {"median": 1.0}, "extra_info": {}},
    ]
    return {"machine_info": {"cpu_model": "Test CPU", "cpu_count": 2, "torch_version": "2.13", "profile": "quick",
                             "date": "2026-01-01T00:00:00"}, "benchmarks": b}


def test_rows_use_gpu_time_and_report_untagged():
    rows, skipped = rows_from_data(_data())
    assert skipped == ["bench.py::test_untagged"]
    triton = next(r for r in rows if r.backend == "triton")
    assert triton.time_s == 0.01


def test_formatting():
    assert format_time(812e-6) == "812 us"
    assert format_time(4.213e-3) == "4.21 ms"
    assert format_time(1.3) == "1.30 s"
    assert format_time(12e-9) == "12.0 ns"
    assert format_bytes(3 << 20) == "3.00 MiB"
    assert format_bytes(100) == "100 B"


def test_table_lines_columns_and_speedups():
    rows, _ = rows_from_data(_data())
    lines, columns = table.build(rows)
    # Plain backends first, then the same-backend variant in its own column.
    assert columns == ["native", "triton", "native: detr_ops-op"]
    by = {(ln.op, ln.case, ln.baseline.impl): ln for ln in lines}
    assert [ln.op for ln in lines][:1] == ["giou_pairwise"]  # suites' order is kept
    assert by["giou_pairwise", "7200x87", "torch formula"].speedup == pytest.approx(10)
    # Two baselines of one case: two lines sharing the detr_ops time.
    assert by["linear_sum_assignment", "900x100", "scipy"].speedup == pytest.approx(4)
    assert by["linear_sum_assignment", "900x100", "lap"].speedup == pytest.approx(2)
    # The speedup is of the best detr_ops column, and the cell names it.
    msda = by["ms_deform_attn", "dec N=2", "grid_sample"]
    assert msda.speedup == pytest.approx(20) and msda.best.backend == "triton"
    md = table.to_markdown(lines, columns)
    assert "| ms_deform_attn | dec N=2 | fwd | grid_sample | 200 ms | 20.0 ms | 10.0 ms | — | 20.0x (triton) |" \
           " 3.00 MiB | 1.00 MiB | 2.00 MiB |" in md
    assert "| 8.00 ms | 4.00 ms | — | 2.00 ms | 4.00x (native: detr_ops-op) |" in md


def test_table_without_memory_or_baseline():
    data = {"benchmarks": [_bench("giou_loss", "1M pairs", "fwd+bwd", "detr_ops", "detr_ops", "native", 0.5)]}
    rows, _ = rows_from_data(data)
    md = table.to_markdown(*table.build(rows))
    assert "peak" not in md
    assert "| giou_loss | 1M pairs | fwd+bwd | — | — | 500 ms | — |" in md


def test_write_report_files(tmp_path, capsys):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(_data()))
    text = report.write_report(str(path), plot=False)
    assert (tmp_path / "table.md").read_text() == text
    assert json.loads((tmp_path / "machine.json").read_text())["cpu_model"] == "Test CPU"
    assert "Machine: 2026-01-01T00:00:00, Test CPU, 2 CPUs" in text
    assert "bench.py::test_untagged" in text
    assert "giou_pairwise" in capsys.readouterr().out


def test_compare_matches_and_verdicts():
    old, _ = rows_from_data(_data())
    new_data = _data(scale=2.0)  # giou rows twice as slow
    new_data["benchmarks"] = new_data["benchmarks"][:-2]  # drop the triton row (and the untagged one)
    new_data["benchmarks"].append(_bench("matcher", "B16 Q100", "fwd", "detr_ops", "detr_ops", "native", 0.1))
    new, _ = rows_from_data(new_data)
    changes, only_old, only_new = compare.match(old, new)
    verdicts = {(c.new.op, c.new.impl): c.verdict(0.1) for c in changes}
    assert verdicts["giou_pairwise", "detr_ops"] == "slower"
    assert verdicts["linear_sum_assignment", "scipy"] == "same"
    assert only_old == [("ms_deform_attn", "dec N=2", "fwd", "detr_ops-triton", "triton")]
    assert only_new == [("matcher", "B16 Q100", "fwd", "detr_ops", "native")]
    faster = compare.Change(new[0], old[0])
    assert faster.ratio == pytest.approx(0.5) and faster.verdict(0.1) == "faster"
    md = compare.to_markdown(changes, 0.1, only_old, only_new)
    assert "| giou_pairwise | 7200x87 | fwd | detr_ops | native | 1.00 ms | 2.00 ms | 2.00x | slower |" in md
    assert "2 slower" in md and "Only in the old file:" in md and "- matcher | B16 Q100 | fwd | detr_ops | native" in md


def test_run_command_quick_and_full(tmp_path):
    quick = run.pytest_command(str(tmp_path / "b.json"), "quick", k="7200x87")
    assert "--benchmark-max-time=0.5" in quick and "--benchmark-min-rounds=3" in quick
    assert "python_files=bench_*.py" in quick
    assert quick[quick.index("-k") + 1] == "7200x87"
    assert any(p.endswith("bench_box_iou.py") for p in quick)
    full = run.pytest_command(str(tmp_path / "b.json"), "full")
    assert "--benchmark-max-time=0.5" not in full and f"--benchmark-json={tmp_path / 'b.json'}" in full


def test_plots_skip_without_data(tmp_path):
    from benchmarks import plots

    rows, _ = rows_from_data(_data())
    # Only "RxC" cases of the solver are single problems; GIoU's "7200x87" and the batches are not.
    assert [(r.case, r.impl) for r in plots.solver_single_rows(rows)] == [
        ("900x100", "scipy"), ("900x100", "lap"), ("900x100", "detr_ops")]
    giou_only = [r for r in rows if r.op == "giou_pairwise"]
    assert "no single-problem rows" in plots.lsa_scaling_plot(giou_only, tmp_path / "lsa.png")
    assert plots.speedup_plot([], tmp_path / "speedup.png") == 0
    assert not list(tmp_path.iterdir())


# --- benchmark trust: spread, load, markers -------------------------------------------------------

def _spread_bench(op, impl, role, median, q1, q3, others=None, rounds=20, backend="native", **extra):
    b = _bench(op, "C1", "fwd", impl, role, backend if role == "detr_ops" else "", median, **extra)
    b["stats"].update(q1=q1, q3=q3, min=q1 * 0.9, max=q3 * 1.1, rounds=rounds)
    if others is not None:
        b["extra_info"].update(others_cores=others, cpus=2)
    return b


def test_rows_carry_spread_and_load():
    from benchmarks import trust

    data = {"benchmarks": [
        _spread_bench("giou_pairwise", "torch formula", "baseline", 0.010, 0.0099, 0.0101, others=0.1),
        _spread_bench("giou_pairwise", "detr_ops", "detr_ops", 0.001, 0.0009, 0.0012, others=0.1),
    ]}
    base, ours = rows_from_data(data)[0]
    assert base.spread == pytest.approx(0.02) and ours.spread == pytest.approx(0.3)
    assert (base.min_s, base.max_s, base.rounds, base.others_cores, base.cpus) == (
        pytest.approx(0.00891), pytest.approx(0.01111), 20, 0.1, 2)
    assert trust.row_flags(base) == [] and trust.row_flags(ours) == ["spread"]
    # GPU rows: the CUDA-event quartiles.
    gpu = _bench("ms_deform_attn", "C1", "fwd", "detr_ops", "detr_ops", "native", 9.0, gpu_median_s=0.01,
                 gpu_q1_s=0.0099, gpu_q3_s=0.0102, gpu_min_s=0.0098, gpu_max_s=0.02)
    (row,), _ = rows_from_data({"benchmarks": [gpu]})
    assert row.spread == pytest.approx(0.03) and row.max_s == 0.02 and row.rounds is None
    # Too few rounds: no spread to judge by.
    assert trust.row_flags(rows_from_data({"benchmarks": [
        _spread_bench("x", "a", "baseline", 1.0, 1.0, 1.0, rounds=2)]})[0][0]) == ["spread"]


def test_table_marks_unreliable_ratios_and_explains_them(tmp_path):
    data = {"machine_info": {"cpu_count": 2, "load_before": {"others_cores": 0.1, "cpus": 2, "loadavg": [0.5, 0.4, 0.3],
                                                             "busiest_others": [{"name": "cc1plus", "cores": 0.08}]},
                             "load_after": {"others_cores": 0.2, "cpus": 2, "loadavg": [0.6, 0.4, 0.3]}},
            "benchmarks": [
                _spread_bench("giou_pairwise", "torch formula", "baseline", 0.010, 0.0099, 0.0101, others=0.1),
                _spread_bench("giou_pairwise", "detr_ops", "detr_ops", 0.001, 0.00099, 0.00101, others=1.2),
                _spread_bench("giou_loss", "torch formula", "baseline", 0.010, 0.009, 0.012, others=0.0),
                _spread_bench("giou_loss", "detr_ops", "detr_ops", 0.002, 0.00198, 0.00202, others=0.0),
                _spread_bench("box_iou", "torch formula", "baseline", 0.004, 0.00399, 0.00401, others=0.0),
                _spread_bench("box_iou", "detr_ops", "detr_ops", 0.002, 0.001995, 0.002005, others=0.0),
            ]}
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(data))
    text = report.write_report(str(path), plot=False, stream=open(tmp_path / "out.txt", "w"))
    assert "| giou_pairwise | C1 | fwd | torch formula | 10.0 ms [2%] | 1.00 ms [2%] | 10.0x ‡ |" in text
    assert "| giou_loss | C1 | fwd | torch formula | 10.0 ms [30%] | 2.00 ms [2%] | 5.00x † |" in text
    assert "| box_iou | C1 | fwd | torch formula | 4.00 ms [<1%] | 2.00 ms [<1%] | 2.00x |" in text
    assert "† spread" in text and "‡ load" in text and "2 of 3 ratios are marked unreliable" in text
    assert "before the run: other processes used 0.10 of 2 CPUs (load average 0.5, 0.4, 0.3); busiest: cc1plus 0.08" in text
    assert "BUSY" not in text
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["load_before"]["others_cores"] == 0.1 and machine["load_after"]["loadavg"] == [0.6, 0.4, 0.3]


def test_rows_without_their_own_load_fall_back_to_the_machines():
    from benchmarks import trust

    rows, _ = rows_from_data(_data())
    busy = {"load_before": {"others_cores": 1.5, "cpus": 2}, "load_after": {"others_cores": 0.1, "cpus": 2}}
    assert trust.row_flags(rows[0], busy) == ["load"]
    assert trust.row_flags(rows[0], {"load_before": {"others_cores": 0.1, "cpus": 2}}) == []
    assert "BUSY" in trust.load_summary(busy)
    lines, columns = table.build(rows)
    md = table.to_markdown(lines, columns, busy)
    assert "| 10.0 ms | 1.00 ms | — | — | 10.0x ‡ |" in md


def test_compare_calls_overlapping_changes_unclear():
    old = rows_from_data({"benchmarks": [_spread_bench("op", "detr_ops", "detr_ops", 0.010, 0.008, 0.013)]})[0]
    clear = rows_from_data({"benchmarks": [_spread_bench("op", "detr_ops", "detr_ops", 0.005, 0.0049, 0.0051)]})[0]
    noisy = rows_from_data({"benchmarks": [_spread_bench("op", "detr_ops", "detr_ops", 0.0085, 0.006, 0.0095)]})[0]
    (c1,), _, _ = compare.match(old, clear)
    (c2,), _, _ = compare.match(old, noisy)
    assert c1.verdict(0.1) == "faster" and not c1.overlap()
    assert c2.ratio == pytest.approx(0.85) and c2.overlap() and c2.verdict(0.1) == "unclear"
    md = compare.to_markdown([c1, c2], 0.1)
    assert "| 10.0 ms [50%] | 8.50 ms [41%] | 0.850x | unclear | † |" in md
    assert "1 faster, 0 slower, 0 same, 1 unclear" in md


def test_speedup_plot_hatches_unreliable_bars(tmp_path):
    from benchmarks import plots

    data = {"benchmarks": [
        _spread_bench("giou_pairwise", "torch formula", "baseline", 0.010, 0.009, 0.011, others=0.0),
        _spread_bench("giou_pairwise", "detr_ops", "detr_ops", 0.001, 0.0009, 0.0012, others=0.0),
    ]}
    rows, _ = rows_from_data(data)
    lines, _ = table.build(rows)
    assert plots.ratio_range(lines[0].baseline, lines[0].best) == (pytest.approx(0.009 / 0.0012),
                                                                   pytest.approx(0.011 / 0.0009))
    assert lines[0].flags() == ["spread"]
    assert plots.speedup_plot(lines, tmp_path / "speedup.png") == 1
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_machine_load_arithmetic(monkeypatch):
    from benchmarks import machine_load

    busy, own = iter([100.0, 103.0]), iter([5.0, 6.0])
    monkeypatch.setattr(machine_load, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(machine_load, "_own_seconds", lambda: next(own))
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(machine_load.time, "monotonic", lambda: next(clock))
    # 3 CPU seconds on the machine over 2 s, 1 of them ours: others used 1 core on average.
    assert machine_load.Probe().start().stop() == pytest.approx(1.0)
    assert machine_load.too_busy(1.0, 2) and not machine_load.too_busy(0.4, 2) and not machine_load.too_busy(None, 2)


def test_machine_load_snapshot_is_sane():
    from benchmarks import machine_load

    snap = machine_load.snapshot(sample_s=0.2)
    assert snap["cpus"] >= 1 and len(snap["loadavg"]) == 3
    assert 0 <= snap["others_cores"] <= snap["cpus"] * 1.5 + 0.5  # tick granularity over 0.2 s
    assert all({"pid", "name", "cores"} <= set(p) for p in snap["busiest_others"])
