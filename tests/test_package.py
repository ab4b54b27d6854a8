"""Importing pvutils changes nothing; `configure_torch_env` sets torch's defaults once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, os, sys
before = dict(os.environ)
import pvutils
unchanged = dict(os.environ) == before
set_now = pvutils.configure_torch_env()
import torch
print(json.dumps({"unchanged": unchanged, "set": set_now, "again": pvutils.configure_torch_env(),
                  "omp": os.environ.get("OMP_WAIT_POLICY")}))
"""


def probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                               "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_has_no_side_effects_and_configure_sets_missing_defaults_once():
    got = probe(OMP_WAIT_POLICY="ACTIVE")  # one subprocess: importing torch takes seconds
    assert got["unchanged"]
    assert got["set"] == {"THP_MEM_ALLOC_ENABLE": "1"}  # a value already there wins
    assert got["omp"] == "ACTIVE"
    assert got["again"] == {}  # torch is loaded now: too late to matter, so nothing is set
