"""Every notebook runs headlessly, with its `parameters` cell overridden to small sizes."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL = {"seq_len": 1024, "num_heads": 4, "num_kv_heads": 4, "head_dim": 32,
         "block_size": 64, "top_k": 4}


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} has committed outputs; clear them"
    where = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert where, f"{path.name} needs a cell tagged 'parameters'"
    names = [n for n in SMALL if f"{n} =" in nb.cells[where[0]].source]
    override = "\n".join(f"{n} = {SMALL[n]!r}" for n in names)
    nb.cells.insert(where[0] + 1, nbformat.v4.new_code_cell(override))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
