"""A non-editable install, as a user outside the repository gets it: into a fresh virtualenv
that already holds Dask's `distributed`, `pip install .` must leave both `import distributed`
(Dask's scheduler) and `import bioscale.distributed` working, install nothing at the top
level but `bioscale`, and ship the experiment YAMLs and cluster profiles as package data.

Dask and bioscale are installed into the new environment, torch is seen from the test's
own; kept in the default suite because it is the only check of what a wheel really contains."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import importlib.metadata as md, json, pathlib, pkgutil, sys
    import distributed
    assert hasattr(distributed, "Client"), distributed.__file__  # Dask's, untouched
    import bioscale, bioscale.models, bioscale.algorithms, bioscale.data_pipeline
    import bioscale.distributed, bioscale.training, bioscale.cluster, bioscale.experiments
    from bioscale.algorithms import build_learner
    from bioscale.algorithms.config import RuleConfig
    from bioscale.models import LocallyConnected2d, build_network
    from bioscale.configs import CONFIG_DIR
    from bioscale.cluster.profile import available_profiles
    from bioscale.experiments import get_table
    from bioscale.experiments.runner import plan
    site = pathlib.Path(bioscale.__file__).parent
    # every module of the namespace imports from the installed copy, none from a checkout
    names = [m.name for m in pkgutil.walk_packages(bioscale.__path__, "bioscale.")]
    optional = ("bioscale.__main__", "bioscale.bench.", "bioscale.distributed.deepspeed_engine",
                "bioscale.data_pipeline.dali_reader")  # runs the CLI / needs an extra
    for name in names:
        if not name.startswith(optional):
            module = __import__(name, fromlist=["_"])
            assert pathlib.Path(module.__file__).is_relative_to(site), (name, module.__file__)
    runs = plan(get_table("fashion-mnist"), get_table("fashion-mnist").budgets["small"], "/d", "/o")
    assert runs and all(r.config_path.is_file() and r.config_path.is_relative_to(site) for r in runs)
    files = [str(f) for f in md.distribution("bioscale").files]
    top = sorted({f.split("/")[0] for f in files if not f.startswith("..")})
    print(json.dumps({"top": top, "modules": len(names), "profiles": available_profiles(),
                      "distributed": distributed.__file__}))
    """
)


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"pip install {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_non_editable_install_beside_dask(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # torch (and the other heavy dependencies) from this environment's site-packages, seen
    # after the new environment's own (a path line in a .pth: the .pth files there, e.g. our
    # editable install's finder, are not run); installing the CPU torch again took ~40 s
    import torch

    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "outer_site.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    _pip(python, "dask[distributed]")
    # from a copy of the sources, as a fresh clone has them: an in-tree build/ of an earlier
    # install would carry modules that no longer exist into the wheel
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "data", "runs", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, src, ignore=junk, symlinks=True)
    _pip(python, str(src), "submitit>=1.5")  # not editable
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["top"] == ["bioscale", f"bioscale-{_version()}.dist-info"], report["top"]
    assert report["modules"] > 60 and "local" in report["profiles"]
    assert "/site-packages/distributed/" in report["distributed"]


def _version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version ="):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")
