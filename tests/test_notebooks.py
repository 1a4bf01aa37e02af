"""Every notebook runs headlessly, with its `parameters` cell overridden to small sizes and
its output folders to a scratch folder; none is committed with outputs.

Outputs in a notebook's working file (a JupyterLab autosave) do not matter: nbclient clears
each cell before running it, and the committed-outputs check reads git's index, what a
commit would hold. `make strip-notebooks` clears them before a commit."""

import contextlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL = {"seq_len": 1024, "num_heads": 4, "num_kv_heads": 4, "head_dim": 32,
         "block_size": 64, "top_k": 4}
#: Parameters naming output folders, relative to the repository root (which the notebooks
#: resolve them from): the test points them under the ignored results/ folder.
OUTPUTS = ("live_out", "out_dir", "extra_dir")


def test_there_are_notebooks():
    assert NOTEBOOKS


def committed_text(path: Path, root: Path = ROOT) -> str:
    """The notebook as git's index holds it (what a commit would hold); the working file
    outside a git checkout."""
    if shutil.which("git") and (root / ".git").exists():
        done = subprocess.run(["git", "show", f":{path.relative_to(root).as_posix()}"], cwd=root,
                              capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.reads(committed_text(path), as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
    assert not with_outputs, f"{path.name}: cells {with_outputs} have committed outputs; run make strip-notebooks"


def _with_an_output(nb):
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", text="autosaved")], 1
    return nb


def test_an_autosave_with_outputs_is_not_a_committed_output(tmp_path):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "n.ipynb"], ["commit", "-qm", "clean"]):
        subprocess.run([*git, *args], check=True)
    nbformat.write(_with_an_output(nb), path)  # JupyterLab saved it after a run
    def committed_outputs():
        return [c.outputs for c in nbformat.reads(committed_text(path, tmp_path), as_version=4).cells
                if c.cell_type == "code" and c.outputs]

    assert committed_outputs() == []
    subprocess.run([*git, "add", "n.ipynb"], check=True)  # staged: a commit would hold the outputs
    assert committed_outputs()


def test_strip_notebooks_clears_outputs(tmp_path):
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    strip_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip_notebooks)
    path = tmp_path / "n.ipynb"
    nbformat.write(_with_an_output(nbformat.read(NOTEBOOKS[0], as_version=4)), path)
    assert strip_notebooks.strip(path)
    stripped = nbformat.read(path, as_version=4)
    assert all(not c.outputs and c.execution_count is None for c in stripped.cells if c.cell_type == "code")
    assert not strip_notebooks.strip(path)  # already clear: not rewritten


@pytest.fixture()
def scratch_under_root(tmp_path):
    """A folder under the repository's ignored results/, as a path relative to the root."""
    relative = Path("results") / "test_notebooks" / tmp_path.name
    yield relative
    shutil.rmtree(ROOT / relative, ignore_errors=True)
    with contextlib.suppress(OSError):  # the shared parent, once no other test's folder is in it
        (ROOT / relative).parent.rmdir()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, scratch_under_root):
    nb = nbformat.read(path, as_version=4)
    where = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert where, f"{path.name} needs a cell tagged 'parameters'"
    source = nb.cells[where[0]].source
    override = [f"{n} = {SMALL[n]!r}" for n in SMALL if f"{n} =" in source]
    override += [f"{n} = {str(scratch_under_root / n)!r}" for n in OUTPUTS if f"{n} =" in source]
    nb.cells.insert(where[0] + 1, nbformat.v4.new_code_cell("\n".join(override)))
    kernel_cwd = tmp_path / "cwd"
    kernel_cwd.mkdir()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(kernel_cwd)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # Output folders resolve from the repository root, not from where the kernel started.
    assert not list(kernel_cwd.iterdir()), f"{path.name} wrote into the kernel's working folder"
