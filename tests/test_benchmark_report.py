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
