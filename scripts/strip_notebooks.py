"""Clear the outputs and execution counts of notebooks (default: notebooks/*.ipynb) before a
commit: `make strip-notebooks`. A notebook already clear is not rewritten."""

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """Clear ``path``'s outputs in place; True when the file changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parent.parent.glob("notebooks/*.ipynb"))
    for path in paths:
        if strip(path):
            print(f"stripped {path}")
