"""The last cell of every notebook: the numbers its text relies on, kept out of the reader's way.

    from notebooks._checked import show_checked
    show_checked({"tolerance": {"rtol": .., "atol": ..}, "tolerance_per_key": {..}, "values": {..}})

`show_checked` displays the dict as one output of MIME type MIME, which Jupyter, Colab and GitHub do
not render: a reader sees only the one line TEXT. tests/test_notebooks.py reads that output from the
committed notebook, re-executes the notebook and compares the two value by value (|new - committed| <=
atol + rtol |committed|, with the key's tolerance_per_key entry or else the notebook's tolerance), so
outputs that the code no longer reproduces fail the tests.

A notebook that needs files it could not get (a data set offline) still runs; it leaves out the values
that need them and names each in "skipped" with the reason. The tests accept a skipped value only
where they cannot provide those files either.
"""

import json

MIME = "application/vnd.dbte.checked+json"
TEXT = "(numbers checked by tests/test_notebooks.py)"


def show_checked(checked):
    """Display `checked` (tolerance, optional tolerance_per_key and skipped, values) as the MIME output."""
    missing = [key for key in ("tolerance", "values") if key not in checked]
    if missing:
        raise ValueError(f"the checked dict needs {missing}")
    # Plain JSON only (no NaN, no numpy scalars): what is compared is what the file holds.
    checked = json.loads(json.dumps(checked, allow_nan=False))
    from IPython.display import display

    display({MIME: checked, "text/plain": TEXT}, raw=True)
