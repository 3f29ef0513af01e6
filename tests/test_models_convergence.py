"""The convergence script end to end on a budget of about a second per model: every model trains
under the same flags, evaluations land in the curve, the table and the plot are written, and the
table is redrawn from results.json alone. The real table (minutes per model) is in docs/models.md."""
import json

from detr_ops.models import convergence


def test_convergence_script(tmp_path):
    out = tmp_path / "conv"
    results = convergence.main(["--minutes", "0.02", "--eval-every-minutes", "0.01", "--models", "detr,dino_co_head",
                                "--val-size", "4", "--batch-size", "2", "--out", str(out)])
    assert [r["name"] for r in results] == ["detr", "dino_co_head"]
    for r in results:
        assert r["steps"] >= 1 and r["curve"] and all(0.0 <= c["AP50"] <= 1.0 for c in r["curve"])
        # The last evaluation is the end of the budget (train.py's final record).
        assert r["curve"][-1]["train_minutes"] >= 0.02 and r["curve"][-1]["step"] == r["steps"]
    table = (out / "table.md").read_text()
    assert "| DETR |" in table and "| DINO + Co-DETR-style ATSS head |" in table and "AP50 @ 0.005 min" in table
    assert (out / "ap50_vs_minutes.png").stat().st_size > 5000
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["minutes"] == 0.02 and len(saved["results"]) == 2
    redo = tmp_path / "redo"
    convergence.main(["--from-results", str(out / "results.json"), "--out", str(redo)])
    assert (redo / "table.md").read_text() == table
