"""tests/python runs under ctest (PYTHONPATH=build/python, see CMakeLists.txt); run alone with
PYTHONPATH=build/python /usr/bin/python3 -m pytest tests/python."""
import pathlib
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # reference.py
try:
    import longctx  # noqa: F401
except ImportError:  # not on PYTHONPATH: the default build folder
    sys.path.insert(0, str(HERE.parent.parent / "build" / "python"))

torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
