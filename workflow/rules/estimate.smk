# Estimation with a named preset. The resolved preset is the `params` of the preset file and of
# every estimate job: editing it reruns exactly these jobs (and the plots), never training or
# distances; adding a preset adds jobs and changes nothing else.


rule preset:
    output:
        "results/estimators/{preset}.json",
    params:
        config=preset_config,
    log:
        "logs/estimators/{preset}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "printf '%s\\n' {params.config:q} > {output} 2> {log}"


rule estimate:
    input:
        distances="results/{experiment}/{run}/distances.zarr",
        preset="results/estimators/{preset}.json",
        store=estimate_store,
        widths=kept_widths,
    output:
        directory("results/{experiment}/{run}/mi/{preset}.zarr"),
    params:
        preset=preset_json,
        store=store_option,
    log:
        "logs/{experiment}/{run}/estimate-{preset}.log",
    threads: 2
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane estimate {input.distances} --config {input.preset} "
        "--estimator {wildcards.preset} {params.store} --out {output} --workers {threads} "
        "> {log} 2>&1"


rule stack:
    input:
        stacked_inputs,
    output:
        directory("results/{experiment}/mi/{preset}.zarr"),
    log:
        "logs/{experiment}/stack-{preset}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane stack {input} --out {output} > {log} 2>&1"


# One alignment width search per run and search settings, kept in the distance cache ahead of the
# members of a sensitivity family, which then reuse it (a family costs no search of its own).


rule widths:
    input:
        distances="results/{experiment}/{run}/distances.zarr",
    output:
        "results/{experiment}/{run}/widths/{search}.json",
    params:
        options=search_options,
    log:
        "logs/{experiment}/{run}/widths-{search}.log",
    threads: 2
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane widths {input.distances} {params.options} --out {output} "
        "--workers {threads} > {log} 2>&1"
