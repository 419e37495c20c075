"""`rzrt run`: classify pictures from the command line.

Driven through click's CliRunner on the `rzrt` group (stdout and stderr kept apart), plus one
run of the real console script in a subprocess. The model is torchvision's resnet18 with random
weights (tests/conftest.py), whose ImageNet class names live in its metadata; a tiny 10-class
ONNX classifier built here covers the label fallbacks.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import rzrt
import rzrt.cli.commands  # noqa: F401  (registers `run` on the group, as main() does)
from rzrt.cli.main import cli
from rzrt.image import preprocess
from rzrt.labels import imagenet_labels

from conftest import IMAGES, torch_model

CAT = IMAGES / "cat.jpg"
FIVE = [IMAGES / n for n in ("Ji.jpg", "LaoShu.jpg", "Long.jpg", "Ma.jpg", "cat.jpg")]
RANK_LINE = re.compile(r"^\s+(\d+)\.\s+(\d+\.\d\d)%\s+(.+?)\s+\((\d+)\)$")


# --- helpers --------------------------------------------------------------------------------

def rzrt_run(*args):
    """`rzrt run ARGS...` in-process; returns click's Result (stdout and stderr separate)."""
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def parse_table(stdout: str) -> dict:
    """{image: [(rank, percent, label, index), ...]} from the text output; fails on stray lines."""
    table, current = {}, None
    for line in stdout.splitlines():
        m = RANK_LINE.match(line)
        if m:
            assert current is not None, f"rank line before any image name: {line!r}"
            rank, pct, label, index = m.groups()
            table[current].append((int(rank), float(pct), label, int(index)))
        else:
            assert line and not line[0].isspace(), f"unexpected line {line!r}"
            current = line
            table[current] = []
    return table


def parse_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result, *must_mention):
    """Non-zero exit, nothing on stdout, exactly one line on stderr naming the culprit."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception   # not an escaped exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "internal error" not in lines[0]
    for text in must_mention:
        assert str(text) in lines[0]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def stripped_resnet18(resnet18_path, tmp_path_factory) -> Path:
    """resnet18 with its metadata_props (the labels) removed."""
    model = onnx.load(str(resnet18_path))
    assert any(p.key == "labels" for p in model.metadata_props)
    del model.metadata_props[:]
    path = tmp_path_factory.mktemp("models") / "resnet18-nolabels.onnx"
    onnx.save(model, str(path))
    return path


TINY_CLASSES = 10


def tiny_classifier(path: Path, labels=None) -> Path:
    """(N, 3, 8, 8) -> GlobalAveragePool -> Flatten -> Gemm -> (N, 10) logits; optional metadata labels."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((TINY_CLASSES, 3)).astype(np.float32) * 3
    b = rng.standard_normal(TINY_CLASSES).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", TINY_CLASSES])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if labels is not None:
        helper.set_model_props(model, {"labels": json.dumps(labels)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_expected_top1(model_path: Path, image: Path) -> int:
    """What the tiny classifier must answer, computed here with numpy alone."""
    model = onnx.load(str(model_path))
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    x = preprocess(image, size=8, crop=8)
    return int(np.argmax(w @ x.mean(axis=(1, 2)) + b))


@pytest.fixture
def tiny(tmp_path) -> Path:
    """The tiny classifier, without labels."""
    return tiny_classifier(tmp_path / "tiny.onnx")


# --- the text table ------------------------------------------------------------------------

def test_prints_image_name_and_five_ranked_lines(resnet18_path):
    result = rzrt_run(resnet18_path, CAT)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    table = parse_table(result.stdout)
    assert list(table) == [str(CAT)]
    rows = table[str(CAT)]
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    names = imagenet_labels()
    for _, pct, label, index in rows:
        assert 0 < pct <= 100
        assert label == names[index]
    percents = [r[1] for r in rows]
    assert percents == sorted(percents, reverse=True)
    assert len({r[3] for r in rows}) == 5


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_sets_the_number_of_lines(resnet18_path, k):
    result = rzrt_run(resnet18_path, CAT, "--top-k", k)
    assert result.exit_code == 0, result.output
    rows = parse_table(result.stdout)[str(CAT)]
    assert [r[0] for r in rows] == list(range(1, k + 1))


def test_top1_matches_direct_session_and_torch(resnet18_path):
    import torch

    x = preprocess(CAT)[None]
    (logits,) = rzrt.InferenceSession(str(resnet18_path)).run(None, {"input": x})
    with torch.no_grad():
        torch_logits = torch_model("resnet18")(torch.from_numpy(x)).numpy()
    assert int(np.argmax(logits)) == int(np.argmax(torch_logits))

    probs = softmax(logits.astype(np.float64))[0]
    out = parse_json(rzrt_run(resnet18_path, CAT, "--json"))
    top = out["results"][0]["top"]
    assert top[0]["index"] == int(np.argmax(logits))
    assert [t["index"] for t in top] == list(np.argsort(-probs)[:5])
    np.testing.assert_allclose([t["probability"] for t in top], probs[[t["index"] for t in top]], rtol=1e-5)

    rows = parse_table(rzrt_run(resnet18_path, CAT).stdout)[str(CAT)]
    assert rows[0][3] == int(np.argmax(logits))
    assert rows[0][1] == pytest.approx(probs.max() * 100, abs=0.006)


# --- JSON ----------------------------------------------------------------------------------

def test_json_output_structure(resnet18_path):
    out = parse_json(rzrt_run(resnet18_path, CAT, IMAGES / "Ma.jpg", "--json", "--top-k", 4))
    assert out["errors"] == []
    assert [r["image"] for r in out["results"]] == [str(CAT), str(IMAGES / "Ma.jpg")]
    names = imagenet_labels()
    for r in out["results"]:
        assert len(r["top"]) == 4
        for t in r["top"]:
            assert set(t) == {"index", "label", "probability"}
            assert isinstance(t["index"], int) and t["label"] == names[t["index"]]
            assert 0.0 < t["probability"] <= 1.0
        probs = [t["probability"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0 + 1e-9


# --- several images, folders, batching -------------------------------------------------------

def test_several_images_and_a_folder_are_all_reported(resnet18_path, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(IMAGES / "Ji.jpg", folder / "b.jpg")
    shutil.copy(IMAGES / "Ma.jpg", folder / "a.jpg")
    shutil.copy(IMAGES / "She.jpg", folder / "nested" / "c.JPG")
    (folder / "notes.txt").write_text("not a picture, and not named like one: ignored")
    result = rzrt_run(resnet18_path, CAT, folder, IMAGES / "Long.jpg", "--top-k", 2)
    assert result.exit_code == 0, result.output
    table = parse_table(result.stdout)
    assert list(table) == [str(CAT), str(folder / "a.jpg"), str(folder / "b.jpg"),
                           str(folder / "nested" / "c.JPG"), str(IMAGES / "Long.jpg")]
    assert all(len(rows) == 2 for rows in table.values())


def test_batch_size_does_not_change_results(resnet18_path):
    by2 = parse_json(rzrt_run(resnet18_path, *FIVE, "--batch", 2, "--json"))["results"]
    by8 = parse_json(rzrt_run(resnet18_path, *FIVE, "--batch", 8, "--json"))["results"]
    assert [r["image"] for r in by2] == [r["image"] for r in by8] == [str(p) for p in FIVE]
    for a, b in zip(by2, by8):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]],
                                   [t["probability"] for t in b["top"]], rtol=1e-5)


def test_batched_results_equal_one_image_at_a_time(resnet18_path):
    together = parse_json(rzrt_run(resnet18_path, *FIVE[:3], "--batch", 3, "--json"))["results"]
    for path, r in zip(FIVE[:3], together):
        alone = parse_json(rzrt_run(resnet18_path, path, "--json"))["results"][0]
        assert r["image"] == alone["image"] == str(path)
        np.testing.assert_allclose([t["probability"] for t in r["top"]],
                                   [t["probability"] for t in alone["top"]], rtol=1e-5)


# --- unreadable pictures among good ones -------------------------------------------------------

def test_unreadable_image_is_named_and_the_good_ones_still_printed(resnet18_path, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a jpeg")
    result = rzrt_run(resnet18_path, CAT, bad, IMAGES / "Ma.jpg", "--batch", 2)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert list(parse_table(result.stdout)) == [str(CAT), str(IMAGES / "Ma.jpg")]
    assert str(bad) in result.stderr
    assert str(CAT) not in result.stderr


def test_unreadable_image_in_json_mode_is_listed_in_errors(resnet18_path, tmp_path):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(CAT.read_bytes()[:4000])
    result = rzrt_run(resnet18_path, bad, CAT, "--json")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    out = json.loads(result.stdout)
    assert [r["image"] for r in out["results"]] == [str(CAT)]
    assert [e["image"] for e in out["errors"]] == [str(bad)]
    assert result.stderr.strip()   # says something went wrong


# --- user errors: one line, no traceback, non-zero exit ------------------------------------------

def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    assert_one_line_error(rzrt_run(missing, CAT), missing)


def test_model_that_is_not_onnx(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a protobuf")
    assert_one_line_error(rzrt_run(fake, CAT), fake)


def test_picture_given_as_model():
    assert_one_line_error(rzrt_run(CAT, CAT), CAT)


def test_folder_with_no_images(resnet18_path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    assert_one_line_error(rzrt_run(resnet18_path, empty), empty)


@pytest.mark.parametrize("option,value", [("--mean", "0.5,0.5"), ("--std", "1,2,3,4"), ("--mean", "a,b,c"),
                                          ("--std", "0.2,0,0.2"), ("--mean", "nan,0,0")])
def test_bad_mean_or_std(resnet18_path, option, value):
    assert_one_line_error(rzrt_run(resnet18_path, CAT, option, value), option)


def test_labels_file_with_wrong_number_of_lines(resnet18_path, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert_one_line_error(rzrt_run(resnet18_path, CAT, "--labels", labels), labels, "2", "1000")


def test_labels_file_missing(resnet18_path, tmp_path):
    labels = tmp_path / "absent.txt"
    assert_one_line_error(rzrt_run(resnet18_path, CAT, "--labels", labels), labels)


def test_labels_file_not_utf8(tiny, tmp_path):
    labels = tmp_path / "latin1.txt"
    labels.write_bytes("\n".join(f"caf\u00e9 {i}" for i in range(10)).encode("latin-1"))
    assert_one_line_error(rzrt_run(tiny, CAT, "--size", 8, "--crop", 8, "--labels", labels), labels)


def test_image_size_the_model_cannot_take(resnet18_path):
    assert_one_line_error(rzrt_run(resnet18_path, CAT, "--crop", 100), "224")


# --- where class names come from -----------------------------------------------------------------

def test_labels_file_names_are_used(resnet18_path, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing number {i}\n" for i in range(1000)))
    result = rzrt_run(resnet18_path, CAT, "--labels", labels)
    assert result.exit_code == 0, result.output
    for _, _, label, index in parse_table(result.stdout)[str(CAT)]:
        assert label == f"thing number {index}"


def test_model_metadata_labels_are_used(tmp_path):
    names = [f"meta-{i}" for i in range(TINY_CLASSES)]
    model = tiny_classifier(tmp_path / "tiny-labelled.onnx", labels=names)
    result = rzrt_run(model, CAT, "--size", 8, "--crop", 8)
    assert result.exit_code == 0, result.output
    rows = parse_table(result.stdout)[str(CAT)]
    assert [r[2] for r in rows] == [names[r[3]] for r in rows]
    assert rows[0][3] == tiny_expected_top1(model, CAT)


def test_labels_file_beats_model_metadata(tmp_path):
    model = tiny_classifier(tmp_path / "tiny-labelled.onnx", labels=[f"meta-{i}" for i in range(10)])
    labels = tmp_path / "mine.txt"
    labels.write_text("".join(f"mine-{i}\n" for i in range(10)))
    result = rzrt_run(model, CAT, "--size", 8, "--crop", 8, "--labels", labels)
    assert result.exit_code == 0, result.output
    assert all(r[2] == f"mine-{r[3]}" for r in parse_table(result.stdout)[str(CAT)])


def test_labels_file_with_bracketed_names_and_bom(tiny, tmp_path):
    """Lines such as "[PAD]" are names, not a broken JSON list; a UTF-8 BOM is not part of a name."""
    names = ["[PAD]", "[UNK]"] + [f"c{i}" for i in range(2, 10)]
    labels = tmp_path / "brackets.txt"
    labels.write_text("\n".join(names) + "\n", encoding="utf-8-sig")
    result = rzrt_run(tiny, CAT, "--size", 8, "--crop", 8, "--labels", labels, "--top-k", 10, "--json")
    assert {t["label"] for t in parse_json(result)["results"][0]["top"]} == set(names)


def test_1000_classes_without_metadata_use_bundled_imagenet(stripped_resnet18, resnet18_path):
    plain = parse_json(rzrt_run(stripped_resnet18, CAT, "--json"))["results"][0]["top"]
    names = imagenet_labels()
    assert len(names) == 1000
    assert all(t["label"] == names[t["index"]] for t in plain)
    labelled = parse_json(rzrt_run(resnet18_path, CAT, "--json"))["results"][0]["top"]
    assert [t["index"] for t in plain] == [t["index"] for t in labelled]


def test_small_model_without_labels_prints_class_indices(tiny):
    result = rzrt_run(tiny, CAT, IMAGES / "Ma.jpg", "--size", 8, "--crop", 8, "--top-k", 3)
    assert result.exit_code == 0, result.output
    table = parse_table(result.stdout)
    for image in (CAT, IMAGES / "Ma.jpg"):
        rows = table[str(image)]
        assert len(rows) == 3
        assert all(label == str(index) for _, _, label, index in rows)
        assert rows[0][3] == tiny_expected_top1(tiny, image)


def test_small_model_metadata_with_wrong_count_falls_back_to_indices(tmp_path):
    model = tiny_classifier(tmp_path / "tiny-5.onnx", labels=["a", "b", "c", "d", "e"])
    out = parse_json(rzrt_run(model, CAT, "--size", 8, "--crop", 8, "--json"))
    assert all(t["label"] == str(t["index"]) for t in out["results"][0]["top"])


def test_top_k_above_the_class_count_prints_every_class(tiny):
    out = parse_json(rzrt_run(tiny, CAT, "--size", 8, "--crop", 8, "--top-k", 50, "--json"))
    top = out["results"][0]["top"]
    assert sorted(t["index"] for t in top) == list(range(TINY_CLASSES))
    assert sum(t["probability"] for t in top) == pytest.approx(1.0)


# --- the real console script --------------------------------------------------------------------

def test_console_script_runs_and_reports_a_bad_image(resnet18_path, tmp_path):
    script = Path(sys.executable).parent / "rzrt"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rzrt.cli"]
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    proc = subprocess.run([*command, "run", str(resnet18_path), str(CAT), str(bad), "--top-k", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = parse_table(proc.stdout)[str(CAT)]
    assert [r[0] for r in rows] == [1, 2]
    assert str(bad) in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")
