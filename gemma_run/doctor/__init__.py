"""The environment doctor behind `gemma-run task=test`: checks that each return a Finding, and the report.

One module per family of checks (versions, shims, env, gpus, quant, deepspeed, smoke); registry.py orders
and runs them, report.py writes the table, report.json and report.md. Nothing heavy is imported here.
"""
