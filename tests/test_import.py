"""Importing pgolf and triton_kernels (every module) has no side effects."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, json, os, pkgutil, sys
before_env = dict(os.environ)
import torch
mods = []
for pkg_name in ("pgolf", "triton_kernels"):
    pkg = importlib.import_module(pkg_name)
    mods.append(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        importlib.import_module(info.name)
        mods.append(info.name)
print(json.dumps({"cuda_initialized": torch.cuda.is_initialized(), "modules": mods,
                  "env_changed": sorted(k for k in os.environ if os.environ.get(k) != before_env.get(k))}))
"""


def test_importing_every_module_has_no_side_effects(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, f"imports printed something: {out.stdout!r}"
    report = json.loads(lines[0])
    assert report["cuda_initialized"] is False
    assert report["env_changed"] == []
    assert "pgolf.model.gpt" in report["modules"] and "triton_kernels" in report["modules"]
    assert list(tmp_path.iterdir()) == [], "imports created files in the working directory"
