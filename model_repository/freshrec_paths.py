"""Puts the project's import paths on sys.path inside a python backend stub.

The stub ignores PYTHONPATH, but it does put the backend folder on sys.path (it imports
triton_python_backend_utils from there). `freshrec serve` (freshrec.processes.TritonServer) copies
this file into that folder and passes the project's paths in FRESHREC_PYTHONPATH, so every
model.py starts with `import freshrec_paths` and nothing else to find the project.
"""

import os
import site
import sys

PYTHONPATH_ENV = "FRESHREC_PYTHONPATH"

# most important first: the project before the environment's site-packages
for _path in reversed(os.environ.get(PYTHONPATH_ENV, "").split(os.pathsep)):
    if _path and _path not in sys.path:
        site.addsitedir(_path)  # runs the .pth files of site-packages (editable installs)
        sys.path.remove(_path)
        sys.path.insert(0, _path)
