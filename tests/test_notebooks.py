"""Both notebooks run top to bottom, headless, on a small budget; `tune plot` writes a PNG."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["search_curves.ipynb", "cost_model.ipynb"])
def test_notebook_executes(name, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "notebooks are committed without outputs"
    monkeypatch.setenv("TUNER_NOTEBOOK_TRIALS", "8")
    monkeypatch.delenv("TUNER_NOTEBOOK_DB", raising=False)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"


def test_tune_plot_writes_a_png(tmp_path):
    from records import NewRecord, RecordStore
    from tuner.cli import main
    from tuner.measure.result import ErrorKind, MeasureResult
    from tuner.ir.target import host_target
    from tuner.ir.task import Task

    db = tmp_path / "plot.db"
    task = Task.create("matmul", (32, 32, 32))
    with RecordStore(f"sqlite:///{db}") as store:
        for i in range(12):
            ok = i % 5 != 3
            result = MeasureResult(ErrorKind.NONE if ok else ErrorKind.CRASH, "",
                                   (1e-4 / (1 + i),) if ok else (), 1 if ok else 0, 0.1,
                                   1000.0 + i)
            store.add_many(task, host_target(1), [NewRecord(
                f'[{{"kind":"split","axis":"i","factors":[{i + 1}]}}]', result, i,
                strategy="random")])
    png = tmp_path / "curve.png"
    assert main(["plot", "--db", str(db), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["plot", "--db", str(db), "--task", "matmul:8,8,8", "-o", str(png)]) == 2
