"""Mixed formats under a bit budget: sensitivity per module x candidate format (``probe``), an exact
solver over the whole Pareto frontier (``solver``), constraints and recipes (``assign``), the
frontier with measured points (``frontier``), figures (``figures``) and the CLI's workflow (``workflow``)."""
from .assign import GROUP_PRESETS, Constraints, mixed_recipe
from .frontier import Frontier, build_frontier
from .probe import Sensitivity, clear_cache, format_sensitivity, weights_digest
from .solver import Option, Point, Unit, best_within, pareto_frontier

__all__ = ["GROUP_PRESETS", "Constraints", "Frontier", "Option", "Point", "Sensitivity", "Unit", "best_within",
           "build_frontier", "clear_cache", "format_sensitivity", "mixed_recipe", "pareto_frontier", "weights_digest"]
