"""The PixelWizard workflow: the Snakefile, the stage scripts (stages/), the Snakemake profiles, config.yaml, the demo
prompts and the `pixelwizard` CLI (cli.py). The repository keeps them at its top level; an installed PixelWizard
carries them inside the package as `pixelwizard.workflow` (pyproject.toml maps this folder there)."""
