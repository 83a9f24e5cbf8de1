"""Output paths and unreadable inputs are refused up front, in one line naming the option or file."""
import pytest
import torch

from ubnas.cli import main


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def spec_path(tmp_path):
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(Supernet(load_space("tiny"), (1, 8, 8), 10), {"seed": 0}), path)
    return path


def test_export_refuses_a_folder_or_an_empty_name_before_exporting(tmp_path, spec_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")

    def no_export(*args, **kwargs):
        raise AssertionError("the path must be refused before exporting")
    monkeypatch.setattr(torch.onnx, "export", no_export)
    (tmp_path / "adir.onnx").mkdir()
    err = _error(capsys, ["export", str(spec_path), "--onnx", str(tmp_path / "adir.onnx")])
    assert "--onnx" in err and "is a directory" in err
    err = _error(capsys, ["export", str(spec_path), "--onnx", ""])
    assert "--onnx ''" in err and "expected a file name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.onnx", "arch.yaml"]


def test_calibrate_refuses_an_unwritable_out_before_fitting(tmp_path, capsys, monkeypatch):
    from hwmodels import calibrate as cal

    def no_fit(*args, **kwargs):
        raise AssertionError("the path must be refused before fitting")
    monkeypatch.setattr(cal, "calibrate", no_fit)
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "cal.yaml"
    err = _error(capsys, ["calibrate", "--reference", "scalesim", "--suite", "cifar", "--out", str(out)])
    assert err.startswith(f"ubnas: error: --out {out}: cannot write there"), err


def test_a_binary_layer_csv_names_the_file(tmp_path, capsys):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"name,kind\n\xff\xfe\x00garbage\n")
    err = _error(capsys, ["estimate", "--layers", str(path)])
    assert f"{path}: not a UTF-8 text CSV" in err
