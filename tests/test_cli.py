"""``lossprobe`` on the command line: one-line errors (rc 2) for input it cannot read, a CI gate
(``--fail-on``), ``--version``, and the root cause first in its output.

Most cases call ``lossprobe.cli.main`` in-process (what the console script runs); one runs the
real ``python -m lossprobe.cli`` to hold the process-level behaviour (stderr, exit status).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lossprobe
from lossprobe.cli import main


def _csv(path, losses, header="step,loss", sep=","):
    path.write_text(header.replace(",", sep) + "\n" + "\n".join(f"{i}{sep}{v}" for i, v in enumerate(losses)) + "\n")
    return path


@pytest.fixture
def histories(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(300)
    h = {
        "healthy": _csv(tmp_path / "healthy.csv", 2.3 * np.exp(-t / 60) + 0.05 + 0.01 * rng.standard_normal(300)),
        "plateau": _csv(tmp_path / "plateau.csv", np.r_[2.3 * np.exp(-t[:40] / 20) + 1.0,
                                                      1.5 + 0.02 * rng.standard_normal(260)]),
        "nan": _csv(tmp_path / "nan.csv", np.where(t < 150, 2.3 * np.exp(-t / 50), np.nan)),
    }
    return h


def _bad_inputs(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.csv").write_text("\n  \n")
    (tmp_path / "header.csv").write_text("step,loss\n")
    _csv(tmp_path / "semicolon.csv", [2.3, 2.2, 2.1], sep=";")
    _csv(tmp_path / "noloss.csv", [0.1, 0.2, 0.3], header="step,accuracy")
    (tmp_path / "ragged.csv").write_text("step,loss\n0,2.3\n1,2.2,7\n")
    (tmp_path / "text.csv").write_text("step,loss\n0,abc\n1,def\n")
    (tmp_path / "bad.json").write_text('{"loss": [1, 2')
    (tmp_path / "scalar.json").write_text("42")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.csv").write_bytes("step,loss\n0,2.3 \xe9\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    return {
        "missing.csv": "no such file", "empty.csv": "empty", "blank.csv": "empty",
        "header.csv": "no rows", "semicolon.csv": "';'", "noloss.csv": "no loss column",
        "ragged.csv": "line 3 has 3 fields", "text.csv": "no numbers", "bad.json": "not valid JSON",
        "scalar.json": "JSON holds", "binary.csv": "binary", "latin1.csv": "not UTF-8",
        "folder": "directory",
    }


def test_unreadable_input_is_one_line_and_rc_2(tmp_path, capsys):
    for name, says in _bad_inputs(tmp_path).items():
        rc = main(["diagnose", str(tmp_path / name)])
        out, err = capsys.readouterr()
        assert rc == 2, name
        assert out == "" and err.count("\n") == 1, (name, err)
        assert err.startswith(f"lossprobe diagnose: {tmp_path / name}: ") and says in err, (name, err)


def test_python_api_raises_the_same_one_line_error(tmp_path):
    from lossprobe.posthoc import HistoryError
    (tmp_path / "header.csv").write_text("step,loss\n")
    with pytest.raises(HistoryError, match="no rows"):
        lossprobe.diagnose(tmp_path / "header.csv")
    with pytest.raises(HistoryError, match="no loss column"):
        lossprobe.diagnose({"accuracy": [0.1, 0.2]})
    # JSON records are columns too
    (tmp_path / "records.json").write_text(json.dumps([{"step": i, "loss": 2.3} for i in range(50)]))
    assert all(f.code != "nan_loss" for f in lossprobe.diagnose(tmp_path / "records.json"))


def test_fail_on_gates_by_severity(histories, capsys):
    # a NaN history is critical: the gate fails at both levels
    assert main(["diagnose", str(histories["nan"]), "--fail-on", "critical"]) == 1
    assert main(["diagnose", str(histories["nan"]), "--fail-on", "warning"]) == 1
    assert "nan_loss" in capsys.readouterr().out
    # a plateau is a warning: only the warning gate fails
    assert main(["diagnose", str(histories["plateau"]), "--fail-on", "warning"]) == 1
    assert main(["diagnose", str(histories["plateau"]), "--fail-on", "critical"]) == 0
    assert main(["diagnose", str(histories["plateau"])]) == 0                  # no gate: reporting only
    assert main(["diagnose", str(histories["healthy"]), "--fail-on", "warning"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["diagnose", str(histories["nan"]), "--fail-on", "info"])
    assert e.value.code == 2


def test_output_leads_with_the_root_cause(histories, capsys):
    main(["diagnose", str(histories["nan"])])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "lossprobe: health = critical (1 root cause)"
    assert any(line.startswith("  root cause: nan_loss - ") for line in out)
    assert out[-1].startswith("  fix first (nan_loss): ")
    main(["diagnose", str(histories["nan"]), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["health"] == "critical" and rep["root_causes"][0]["code"] == "nan_loss"
    assert rep["fix_first"] == rep["root_causes"][0]["fix_first"] and rep["fix_first"]
    assert rep["findings"][0]["code"] == "nan_loss" and rep["findings"][0]["status"] == "active"


def test_version_and_the_real_process(histories, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lossprobe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"lossprobe {lossprobe.__version__}"
    out = subprocess.run([sys.executable, "-m", "lossprobe.cli", "diagnose", str(tmp_path / "nope.csv")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"lossprobe diagnose: {tmp_path / 'nope.csv'}: no such file"
    out = subprocess.run([sys.executable, "-m", "lossprobe.cli", "diagnose", str(histories["nan"]),
                          "--fail-on", "critical"], capture_output=True, text=True)
    assert out.returncode == 1 and "nan_loss" in out.stdout


def test_bad_classes_argument_is_a_usage_error(histories, capsys):
    with pytest.raises(SystemExit) as e:
        main(["diagnose", str(histories["healthy"]), "--classes", "-3"])
    assert e.value.code == 2 and "whole number" in capsys.readouterr().err
