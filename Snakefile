"""PixelWizard: text -> uncond -> LR anchor (-> preview) -> HR shortcut -> patched decode, as resumable Snakemake jobs.

The rules are the stage table (pixelwizard/pipeline/stages.py): one rule per stage, one job per shard of its prompts
(models load once per job), each job's output a marker named by the digest of what its shard must produce, its log
OUT/logs/<stage>/<shard>.log (the command says so; not a `log:` file, which would need the marker's wildcards). The
stage scripts write every per-prompt output atomically with its provenance and skip what is already current.

    pixelwizard generate ...                           # the usual entry point: checks, locks, plans, runs this
    snakemake --cores 2 --directory OUT --configfile my-run.yaml [-n -p]   # a run configuration, as config.yaml

A run configuration given here is recorded in OUT when the run starts (not by a dry run), as `generate` records its
own, so `pixelwizard status`, `report` and `decode` work on the run.
"""

from pixelwizard.pipeline.plan import snakemake_plan


PLAN, SNAPSHOT, START = snakemake_plan(config)  # config: {snapshot: PATH} from the CLI, or a run configuration
wildcard_constraints:
    shard=r"\d{5}",
    digest=r"[0-9a-f]{16}",


onstart:
    START()


rule all:
    default_target: True
    input: PLAN.targets()


for stage in PLAN.stages:
    rule:
        name: stage.name
        input: lambda wc, s=stage.name: PLAN.input_markers(s, wc.shard)
        output: PLAN.marker_pattern(stage.name)
        params: command=lambda wc, s=stage.name: PLAN.command(s, wc.shard, SNAPSHOT)
        resources: gpu=PLAN.gpus(stage.name)
        shell: "{params.command}"
