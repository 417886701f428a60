"""Sweeps: a grid of recipes and models, expanded from a YAML file and run as parallel jobs
(local worker processes, or Ray tasks on a cluster); each job writes a normal run directory."""
from __future__ import annotations

from .jobs import run_job
from .results import read_manifest, sweep_status, sweep_table
from .run import SweepOutcome, SweepPlan, plan, run_sweep, write_outputs
from .spec import Cell, Sweep, expand, load_sweep

__all__ = ["Cell", "Sweep", "SweepOutcome", "SweepPlan", "expand", "load_sweep", "plan", "run_job", "run_sweep",
           "write_outputs", "sweep_status", "sweep_table"]
