# The one pass over the activations: N×N squared distances of every (split, step, layer), on a
# Dask cluster of {threads} single-threaded workers (or the scheduler at DASK_SCHEDULER_ADDRESS).
# Every estimator preset works from this cache.


rule distances:
    input:
        store="results/{experiment}/{run}/activations.zarr",
    output:
        directory("results/{experiment}/{run}/distances.zarr"),
    log:
        "logs/{experiment}/{run}/distances.log",
    threads: 2
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane distances {input.store} --out {output} --workers {threads} "
        "> {log} 2>&1"
