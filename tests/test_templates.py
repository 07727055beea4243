"""The bootstrap every model.py imports first, and the launcher that places it."""

import re

from model_repository import templates


def test_bootstrap_reads_the_variable_the_launcher_sets():
    source = templates.BOOTSTRAP.read_text()
    assert re.search(rf'^PYTHONPATH_ENV = "{templates.PYTHONPATH_ENV}"$', source, re.M), source


def test_every_template_imports_the_bootstrap_first():
    for model in templates.MODELS_WITH_CODE:
        code = [line for line in templates.template(model).read_text().splitlines()
                if line.startswith(("import ", "from "))]
        assert code[0].startswith("import freshrec_paths"), (model, code[:3])
