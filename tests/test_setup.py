"""scripts/setup_env.sh: one clear line when Python 3.10 is missing; an existing cached env is reused."""
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_missing_python_310_is_one_line_naming_what_to_install(tmp_path):
    if shutil.which("python3.10", path="/usr/bin:/bin"):
        import pytest
        pytest.skip("this machine has a system python3.10")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "no-pyenv"),
           "SPARSECTR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", "setup_env.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.10 not found" in lines[0] and "install" in lines[0], proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_venv_is_cached_outside_the_checkout_by_lock_hash():
    import hashlib
    link = os.path.join(REPO_ROOT, ".venv")
    assert os.path.islink(link)
    target = os.readlink(link)
    assert not os.path.abspath(target).startswith(REPO_ROOT + os.sep)
    digest = hashlib.sha256(open(os.path.join(REPO_ROOT, "requirements.lock"), "rb").read()).hexdigest()[:16]
    assert os.path.basename(target.rstrip("/")) == f"venv-{digest}"
    assert os.path.exists(os.path.join(target, ".complete"))


def test_test_only_packages_live_beside_the_venv():
    # In the venv, `import kubernetes` (every TFX component's process) would import them too.
    from importlib import metadata

    from scripts.lock_hashes import read_lock
    _, test_pins = read_lock(os.path.join(REPO_ROOT, "requirements-test.lock"))
    _, pins = read_lock(os.path.join(REPO_ROOT, "requirements.lock"))
    assert test_pins and all(hashes for _, _, hashes in test_pins)
    runtime = {name.lower() for name, _, _ in pins}
    test_deps = os.path.join(REPO_ROOT, ".test-deps")
    for name, version, _ in test_pins:
        assert name.lower() not in runtime, name
        found = list(metadata.distributions(name=name, path=[test_deps]))
        assert [d.version for d in found] == [version], name
    # This process has them (tests/conftest.py); a pipeline process does not.
    import kubernetes_validate  # noqa: F401
    code = "import importlib.util; print(importlib.util.find_spec('kubernetes_validate') is None)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr
