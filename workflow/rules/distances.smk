# The one pass over the activations: N×N squared distances of every (split, step, layer), on a
# Dask cluster of {threads} single-threaded workers (or the scheduler at DASK_SCHEDULER_ADDRESS).
# Every estimator preset works from this cache. The store is a run's own or, for an experiment of
# `stores:`, an existing one; a digest of its files is a param, so a changed store reruns.


rule distances:
    input:
        store=activation_store,
    output:
        directory("results/{experiment}/{run}/distances.zarr"),
    params:
        store=store_params,
        storage=lambda wildcards: experiment(wildcards.experiment)["distances"]["store"],
    log:
        "logs/{experiment}/{run}/distances.log",
    threads: 2
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane distances {input.store} --out {output} --workers {threads} "
        "--storage {params.storage} "
        "> {log} 2>&1"
