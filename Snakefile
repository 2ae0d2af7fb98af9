"""PixelWizard: text -> LR anchor -> HR shortcut -> patched decode, as resumable Snakemake stages.

Each rule is one job per shard of prompts (models load once per job) and writes per-prompt outputs
atomically; its Snakemake output is the shard's marker under OUT/.done/. A job skips prompts whose outputs
already carry the same provenance digest, so a rerun recomputes exactly what is missing or outdated.

    pixelwizard generate ...                        # the usual entry point (writes OUT/pixelwizard.yaml)
    snakemake --cores 2 --configfile OUT/pixelwizard.yaml
"""

import sys
from pathlib import Path

from pixelwizard.pipeline.gpu_lease import gpu_lease
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.plan import Plan, decode_tag


configfile: str(Path(workflow.basedir) / "config.yaml")


RUN = RunConfig.from_mapping(config)
PLAN = Plan.from_run(RUN)
LAYOUT = PLAN.layout
SHARDS = list(PLAN.shards)
DECODE = f"decode-{decode_tag(RUN.resolved_preset())}"
STAGES = Path(workflow.basedir) / "stages"
PYTHON = sys.executable


def done(marker, shard="{shard}"):
    return str(LAYOUT.done(marker, shard))


def log_path(marker):
    return str(LAYOUT.log(marker, "{shard}"))


def run_stage(stage, shard, log, gpus, launch_all=False):
    """Write the job's spec (ids, texts, settings), lease `gpus` GPUs (none on a CPU machine) and run the
    stage script on it, logging to `log`: through torchrun with one process per GPU when `gpus` > 1, or
    always with `launch_all` (the HR rule, so that the launch path is the same at every size)."""
    spec_path = PLAN.spec(stage, shard).save()
    launcher = PYTHON
    if gpus > 1 or launch_all:
        launcher = f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node {gpus}"
    with gpu_lease(gpus) as env:
        assign = "".join(f"{key}={value} " for key, value in env.items())
        shell(f"{assign}{launcher} {STAGES / STAGE_SCRIPTS[stage]} {spec_path} > {log} 2>&1")


STAGE_SCRIPTS = {
    "uncond": "encode_text.py", "text": "encode_text.py", "lr": "lr_anchor.py", "lr_preview": "lr_preview.py",
    "hr": "hr_shortcut.py", "decode": "decode.py",
}


rule all:
    input:
        expand(done(DECODE), shard=SHARDS),
        expand(done("lr_preview"), shard=SHARDS) if RUN.lr_preview else [],


rule encode_uncond:
    output: done("uncond", "run")
    params: spec=lambda wc: PLAN.params("uncond", "run")
    log: str(LAYOUT.log("uncond", "run"))
    resources: gpu=1
    run: run_stage("uncond", "run", log, resources.gpu)


rule encode_text:
    output: done("text")
    params: spec=lambda wc: PLAN.params("text", wc.shard)
    log: log_path("text")
    resources: gpu=1
    run: run_stage("text", wildcards.shard, log, resources.gpu)


rule lr_anchor:
    input: done("text"), done("uncond", "run")
    output: done("lr")
    params: spec=lambda wc: PLAN.params("lr", wc.shard)
    log: log_path("lr")
    resources: gpu=1
    run: run_stage("lr", wildcards.shard, log, resources.gpu)


rule lr_preview:
    input: done("lr")
    output: done("lr_preview")
    params: spec=lambda wc: PLAN.params("lr_preview", wc.shard)
    log: log_path("lr_preview")
    resources: gpu=1
    run: run_stage("lr_preview", wildcards.shard, log, resources.gpu)


rule hr_shortcut:
    input: done("lr"), done("text"), done("uncond", "run")
    output: done("hr")
    params: spec=lambda wc: PLAN.params("hr", wc.shard)
    log: log_path("hr")
    resources: gpu=RUN.hr_gpus
    run: run_stage("hr", wildcards.shard, log, resources.gpu, launch_all=True)


rule decode:
    input: done("hr")
    output: done(DECODE)
    params: spec=lambda wc: PLAN.params("decode", wc.shard)
    log: log_path(DECODE)
    resources: gpu=RUN.decode_gpus
    run: run_stage("decode", wildcards.shard, log, resources.gpu)
