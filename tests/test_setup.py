"""scripts/setup_env.sh: one clear line when Python 3.10 is missing; an existing cached env is reused."""
import os
import shutil
import subprocess

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
