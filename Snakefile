# infoplane workflow: train -> activations.zarr -> distances.zarr -> mi/<preset>.zarr -> plots.
#
#   snakemake --workflow-profile workflow/profiles/local          # everything in config `run:`
#   snakemake --workflow-profile workflow/profiles/local --report report.html
#
# Every stage is a `python -m infoplane <stage>` command; the settings a job depends on are its
# `params`, so editing an estimator preset reruns only estimation and plots, and adding a seed
# trains only that seed. Targets come from the config, never from what exists under results/.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# The package's schema fills every documented default into `config`.
validate(config, "src/infoplane/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    run=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    preset=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    family=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    search=r"alignment-(linear|log)-[0-9]+-[a-z]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/distances.smk"
include: "workflow/rules/estimate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/phases.smk"


rule all:
    input:
        all_targets(),
    default_target: True
