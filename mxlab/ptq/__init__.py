"""Post-training quantization of a model: the plan, the block-by-block pipeline and the methods.

Nothing here imports the analysis side (tables, plots, report, run directory) or a front end:
the pipeline returns plain records and statistics that those read.
"""
