"""The config <-> models import circle is gone: configs import without torch, and one broken model
file breaks only its own models."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "aelab"


def python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=cwd)


def test_importing_the_config_pulls_neither_torch_nor_a_model():
    done = python("import sys, aelab.config, aelab.registry, aelab.errors\n"
                  "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('aelab.models')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_study_worker_imports_no_plotting_or_statistics_library():
    """Every study process (the driver and each spawned worker) imports aelab.studies: matplotlib and
    scipy.stats (about 1.6 s of CPU a process) load only where a summary draws or computes intervals."""
    done = python("import sys, aelab.studies, aelab.studies.executors\n"
                  "print(sorted(m for m in ('matplotlib', 'scipy.stats', 'sklearn') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_broken_model_file_is_named_and_the_others_still_work(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "aelab", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "aelab" / "models" / "zz_broken.py").write_text("import a_module_that_does_not_exist\n")
    listed = subprocess.run([sys.executable, "-m", "aelab", "models"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    assert "dense:" in listed.stdout and "conv:" in listed.stdout
    assert listed.stderr.strip().count("\n") == 0  # one line
    assert "aelab/models/zz_broken.py failed to import (ModuleNotFoundError" in listed.stderr
    done = python("from aelab.config import RunConfig, make_config\n"
                  "print(make_config(RunConfig(), None, ['model=dense']).model.latent_dim)\n"
                  "from aelab.errors import ConfigError\n"
                  "try:\n    make_config(RunConfig(), None, ['model=zz'])\n"
                  "except ConfigError as e:\n    print(e)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "32"
    assert "unknown model 'zz'" in done.stdout and "zz_broken.py failed to import" in done.stdout
