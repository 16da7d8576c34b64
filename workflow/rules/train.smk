# Train one run (experiment, seed) and capture its activations at the scheduled steps.
# The source file of a model or dataset factory is an input, so editing it retrains the runs
# built with it (the store records the file's SHA-256 in its `factories` attribute).
# `params.config` is the run's resolved settings (the experiment narrowed to this seed, without
# the estimator list); it is written beside the store and is what `infoplane train` reads, so the
# job depends on exactly what it uses. Training uses the GPU when there is one (device: auto).
# The run trains in `.training/` and hard-links its products into place when it has finished;
# `.training/` keeps them. Snakemake deletes the outputs of a killed or failed job, not that
# directory, so the job's next attempt resumes from the last checkpoint instead of starting over,
# and a job marked failed after it had finished (at a cluster's time limit, in its last seconds)
# gets its outputs back from the final checkpoint without training.


rule train:
    input:
        dataset_input,
    output:
        store=directory("results/{experiment}/{run}/activations.zarr"),
        metrics="results/{experiment}/{run}/metrics.csv",
        iterations="results/{experiment}/{run}/iterations.csv",
        checkpoint="results/{experiment}/{run}/checkpoint.pt",
        config="results/{experiment}/{run}/config.json",
    params:
        config=run_config,
        work_dir="results/{experiment}/{run}/.training",
    log:
        "logs/{experiment}/{run}/train.log",
    # small CPU networks gain little from more threads; clusters set more in their profile
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "printf '%s\\n' {params.config:q} > {output.config} && "
        "python -m infoplane train --config {output.config} --experiment {wildcards.experiment} "
        "--run {wildcards.run} --out {output.store} --work-dir {params.work_dir} > {log} 2>&1"
