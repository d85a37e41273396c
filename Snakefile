# morphobench: Cell Painting screens from raw images to reproducible benchmark tables.
#   snakemake --cores all                       everything for config/config.yaml
#   snakemake results/jump_retrieval.tsv        one table
#   snakemake --profile profiles/slurm          on a SLURM cluster
#   snakemake --report results/report.html      after a run: every figure and table with captions
from snakemake.utils import min_version

min_version("9.0")


# The report's front page; each reported figure and table has its caption in workflow/report/.
report: "workflow/report/workflow.rst"


# config/config.yaml is the default; `--configfile X.yaml` replaces it (instead of being merged
# into it), so `snakemake --configfile config/rxrx3.yaml` runs only that screen. Keys a file
# leaves out get the schema's defaults.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/correct.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/teams.smk"
include: "workflow/rules/mae.smk"
include: "workflow/rules/campfire.smk"


rule all:
    input:
        all_targets(),
    default_target: True
