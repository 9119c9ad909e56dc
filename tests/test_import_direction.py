"""The packages import one way only (docs/architecture.md): optim < components < pipelines, and
serving/ is a leaf runtime.

* ``optim``: the optimizers; imports no other package of the project.
* ``serving``: the serving runtime and its clients (model repository, REST, gRPC, metrics, TF
  Serving config, file locks); imports no other package of the project, so the serving process
  and the clients run without the training code. Others may use it: components (the Pusher, the
  ServingCheck) and pipelines import its clients, config writer and quiet logging.
* ``components``: TFX components and module files; may import optim and serving.
* ``pipelines``: pipelines, runners, CLI, reports; may import any of the above (and the KFP artifact
  type shims ``system``/``sparsectr``).

Every ``import`` and ``from ... import`` in every module is checked, those inside functions too.
"""
import ast
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ("optim", "serving", "components", "pipelines", "system", "sparsectr", "benchmarks", "tests",
                    "scripts")
ALLOWED = {
    "optim": {"optim"},
    "serving": {"serving"},
    "components": {"components", "optim", "serving"},
    "pipelines": {"pipelines", "components", "optim", "serving", "system", "sparsectr"},
}


def _modules(package, root=REPO_ROOT):
    for directory, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def imported_packages(path, root=REPO_ROOT):
    """(line, top-level package) of every import in the module at `path` (under `root`); relative
    imports resolve to the module's own package."""
    package = os.path.relpath(path, root).split(os.sep)[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, package if node.level else (node.module or "").split(".")[0]


def arrows_against_the_layers(package, root=REPO_ROOT):
    """'<module>:<line> imports <package>' for each import that points up or sideways out of `package`."""
    wrong = []
    for path in _modules(package, root):
        for line, top in imported_packages(path, root):
            if top in PROJECT_PACKAGES and top not in ALLOWED[package]:
                wrong.append(f"{os.path.relpath(path, root)}:{line} imports {top}")
    return wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    assert list(_modules(package)), f"no modules under {package}/"
    assert arrows_against_the_layers(package) == []


def test_the_check_sees_an_arrow_up(tmp_path):
    """The walker finds imports at module level, inside functions and relative ones."""
    module = tmp_path / "serving" / "sub" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\nfrom . import x\n\ndef f():\n    from pipelines.config import load_config\n"
                      "    import components.models\n")
    assert list(imported_packages(str(module), str(tmp_path))) == [(1, "os"), (2, "serving"), (5, "pipelines"),
                                                                  (6, "components")]
    bad = os.path.join("serving", "sub", "bad.py")
    assert arrows_against_the_layers("serving", str(tmp_path)) == [f"{bad}:5 imports pipelines",
                                                                   f"{bad}:6 imports components"]
