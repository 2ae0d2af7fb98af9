"""One script per stage of the stage table (pixelwizard/pipeline/stages.py), run by the Snakefile's rules:
`python -m pixelwizard.workflow.stages.<stage> SNAPSHOT SHARD` in the run's output directory."""
