"""Execute every notebook in notebooks/ top to bottom and check the committed files are clean.

Each notebook re-derives an identity of the papers and asserts it to numerical
precision (and cross-checks the repository's own functions in its last cell), so a
notebook that runs without error IS the test. They run in a fresh "python3" Jupyter
kernel (nbclient), on the CPU, offline, with the notebooks/ folder as the working
directory, each under its own time limit. 05_quickstart.ipynb reads its iteration
budget from environment variables, set here so that it trains for a few updates only.
If the "python3" kernel is missing, install it into the environment with
`python -m ipykernel install --sys-prefix --name python3` (as .ci/run does).
"""

import os
import time

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
EXPECTED = [
    "01_propositions.ipynb",
    "02_tc_decomposition.ipynb",
    "03_jointvae_kl.ipynb",
    "04_cascade_assignment.ipynb",
    "05_quickstart.ipynb",
]
NOTEBOOK_TIMEOUT_S = 300   # whole notebook (a hang guard, not a speed test: they take seconds to ~1 min)
CELL_TIMEOUT_S = 240


def _read(name):
    return nbformat.read(os.path.join(NB_DIR, name), as_version=4)


def test_the_five_notebooks_are_there():
    present = sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))
    assert present == EXPECTED, f"notebooks/ holds {present}; expected {EXPECTED}"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_clean(name):
    """Outputs cleared and execution counts null, a title cell first, valid nbformat."""
    nb = _read(name)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), \
        f"{name}: the first cell must be a markdown title citing the paper"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs") == [], f"{name}: cell {i} has outputs; clear them before committing"
            assert cell.get("execution_count") is None, f"{name}: cell {i} has an execution count; clear it"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"


def _kernel_available():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return True
    except NoSuchKernel:
        return False


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_executes(name, tmp_path, monkeypatch):
    if not _kernel_available():
        pytest.fail('no "python3" Jupyter kernel: run `python -m ipykernel install --sys-prefix --name python3`.')
    # The kernel inherits this environment: headless, CPU only, quickstart on a tiny budget,
    # quickstart runs written to a temporary folder instead of runs/. The notebooks find the
    # repository themselves, from their working directory notebooks/.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("QUICKSTART_ITERATIONS", "20")
    monkeypatch.setenv("QUICKSTART_EVAL_SAMPLES", "300")
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path / "quickstart"))
    nb = _read(name)
    deadline = []

    def cell_timeout(cell):
        # The whole notebook shares one budget: each cell may use what the earlier ones left.
        if not deadline:
            deadline.append(time.monotonic() + NOTEBOOK_TIMEOUT_S)
        return max(1, min(CELL_TIMEOUT_S, int(deadline[0] - time.monotonic())))

    client = nbclient.NotebookClient(nb, timeout_func=cell_timeout, kernel_name="python3",
                                     resources={"metadata": {"path": NB_DIR}})
    try:
        client.execute()
    except nbclient.exceptions.CellTimeoutError:
        pytest.fail(f"{name} did not finish within its {NOTEBOOK_TIMEOUT_S} s budget", pytrace=False)
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and traceback (e.g. an identity's assert).
        pytest.fail(f"{name} failed:\n{err}", pytrace=False)
