# Datasets that are downloaded on first use (MNIST, CIFAR-10) are fetched and SHA-256-verified
# once per experiment, on the submitting machine (compute nodes often have no network), before
# any of the experiment's runs trains. Built-in and local datasets need no job.


rule dataset:
    output:
        "results/{experiment}/dataset.json",
    params:
        name=lambda w: experiment(w.experiment)["dataset"]["name"],
        options=dataset_options,
    log:
        "logs/{experiment}/dataset.log",
    localrule: True
    resources:
        downloads=1,
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane data fetch {params.name} --options {params.options:q} "
        "--out {output} > {log} 2>&1"
