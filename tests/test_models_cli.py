"""The entry points end to end on a few images: train (with bfloat16 autocast), checkpoint, reload
in evaluate and visualize. Seconds; the real runs are in docs/models.md."""
import json

from detr_ops.models import evaluate, train, visualize


def test_train_evaluate_visualize(tmp_path, capsys):
    out = tmp_path / "run"
    summary = train.main(["--model", "deformable_detr", "--epochs", "1", "--train-size", "16", "--val-size", "8",
                          "--batch-size", "8", "--out", str(out), "--amp", "--no-progress", "--threads", "1"])
    assert summary["step"] == 2 and 0.0 <= summary["AP50"] <= 1.0
    assert (out / "checkpoint.pth").exists() and len((out / "log.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    evaluate.main(["--checkpoint", str(out / "checkpoint.pth")])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Same weights, same held-out images: the reloaded model scores what training reported (the
    # training-time evaluation ran in float32 too; autocast covers only the training forward).
    assert abs(metrics["AP50"] - summary["AP50"]) < 1e-9
    visualize.main(["--checkpoint", str(out / "checkpoint.pth"), "--out", str(tmp_path / "p.png"),
                    "--num-images", "2"])
    assert (tmp_path / "p.png").stat().st_size > 1000
