"""Distillation: the student is built from the teacher's own layers, trained on its soft labels, stored with
int8-row word embeddings, and shipped as a second model users pick by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from finsent.models import SHIPPED_MODELS, resolve_model_dir, shipped_model_dir  # noqa: E402
from finsent.models.testing import make_tiny_model  # noqa: E402
from tests.retrain_helpers import synthetic_sets  # noqa: E402


def _ids(n: int = 4, width: int = 9):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (n, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return ids, mask


def test_a_student_keeping_every_layer_is_the_teacher_and_a_smaller_one_has_the_kept_layers(tmp_path: Path) -> None:
    from finsent.models.distill import student_from_teacher
    from finsent.models.onnx_weights import load_from_onnx

    teacher = load_from_onnx(make_tiny_model(tmp_path / "tiny"))
    n = teacher.encoder.config.num_hidden_layers
    ids, mask = _ids()
    full = student_from_teacher(teacher, tuple(range(n))).eval()
    with torch.no_grad():
        for a, b in zip(full(ids, mask), teacher(ids, mask), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    small = student_from_teacher(teacher, (n - 1,))
    assert small.encoder.config.num_hidden_layers == 1
    src = teacher.encoder.encoder.layer[n - 1].output.dense.weight
    assert torch.equal(small.encoder.encoder.layer[0].output.dense.weight, src)
    assert torch.equal(small.topic_head.weight, teacher.topic_head.weight)
    for bad in ((), (1, 0), (0, n)):
        with pytest.raises(ValueError, match="layers"):
            student_from_teacher(teacher, bad)


def test_int8_rows_storage_round_trips_within_a_row_step_and_rebuilds_in_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from finsent.models.distill import WORD_EMBEDDINGS
    from finsent.models.export import export_model_dir
    from finsent.models.modeldir import read_model_info
    from finsent.models.onnx_weights import load_from_onnx
    from finsent.models.train import load_tokenizer
    from finsent.models.variants import expand_weights

    tiny = make_tiny_model(tmp_path / "tiny")
    model = load_from_onnx(tiny)
    out = tmp_path / "int8rows"
    export_model_dir(model, load_tokenizer(str(tiny)), out, read_model_info(tiny), int8_rows=(WORD_EMBEDDINGS,))
    table = model.encoder.embeddings.word_embeddings.weight.detach().numpy()
    inits = {i.name: i for i in expand_weights(out / "model.onnx").graph.initializer}
    from onnx import numpy_helper

    back = numpy_helper.to_array(inits[WORD_EMBEDDINGS])
    step = np.abs(table).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(back - table) <= step / 2 + 1e-7)
    assert not np.array_equal(back, table)  # it really was rounded
    rebuilt = load_from_onnx(out)
    assert np.array_equal(rebuilt.encoder.embeddings.word_embeddings.weight.detach().numpy(), back)
    # the stored graph itself runs (onnxruntime folds the Cast + Mul) and matches the rebuilt model
    ids, mask = _ids()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in rebuilt(ids, mask)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_distill_command_writes_a_smaller_model_with_a_card_against_its_teacher(tmp_path: Path) -> None:
    from finsent.cli import main
    from finsent.models.runtime import Classifier

    tiny = make_tiny_model(tmp_path / "tiny")
    sent, topic = synthetic_sets(tmp_path / "data")
    out, model_out = tmp_path / "run", tmp_path / "student"
    rc = main(
        [
            "distill",
            "--teacher",
            str(tiny),
            "--layers",
            "1",
            "--no-fpb",
            "--tfns",
            str(sent),
            "--topic",
            str(topic),
            "--out",
            str(out),
            "--model-out",
            str(model_out),
            "--epochs",
            "1",
            "--eval-every",
            "0.5",
            "--threads",
            "1",
            "--name",
            "tiny-l1",
        ]
    )
    assert rc == 0
    meta = json.loads((model_out / "metrics.json").read_text())
    assert meta["layers"] == 1 and meta["config"]["student_layers"] == [1]
    assert meta["teacher"]["layers"] == 2 and meta["config"]["distill_alpha"] > 0
    assert meta["model_version"].startswith("tiny-l1-")
    card = (model_out / "README.md").read_text()
    assert "Distilled from" in card and "Against the teacher" in card and "int8" in card
    assert (model_out / "model.onnx").stat().st_size < (tiny / "model.onnx").stat().st_size
    clf = Classifier.load(model_out, variant="int8")
    preds = clf.predict(["shares jump after strong earnings", "oil falls"])
    assert len(preds) == 2 and clf.info.model_version == meta["model_version"]
    history = json.loads((out / "history.json").read_text())
    assert history and all("val_mean_macro_f1" in row for row in history)


def test_distill_rejects_bad_layers_and_missing_data_in_one_line(tmp_path: Path, capsys) -> None:
    from finsent.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["distill", "--layers", "2,1"])
    assert exc.value.code == 2
    assert "increasing" in capsys.readouterr().err
    rc = main(["distill", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing data file" in err and "--data-dir" in err
    assert main(["distill", "--export-only", "--out", str(tmp_path / "never-run")]) == 2
    assert "run finsent distill first" in capsys.readouterr().err


def test_a_shipped_model_is_chosen_by_name_and_a_path_still_wins(tmp_path: Path, monkeypatch) -> None:
    name = SHIPPED_MODELS[0]
    assert resolve_model_dir(None) == shipped_model_dir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(name) == shipped_model_dir(name)
    assert all((shipped_model_dir(n) / "model.onnx").is_file() for n in SHIPPED_MODELS)
    (tmp_path / name).mkdir()
    assert resolve_model_dir(name) == Path(name)  # an existing path wins
    assert resolve_model_dir(tmp_path / "x") == tmp_path / "x"
