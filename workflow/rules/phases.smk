# Fitting and compression per layer with confidence intervals, and the verdict over presets
# (`infoplane phases`): one table per experiment (all its presets) and one per family (its
# members), and the family figure (members' trajectories and the band they span). Only
# experiments that name a family get them.


rule phases:
    input:
        comparison_inputs,
    output:
        report(
            "results/{experiment}/phases.csv",
            caption="../report/phases.rst",
            category="{experiment}",
            subcategory="phases and verdicts",
            labels={"table": "all presets"},
        ),
    log:
        "logs/{experiment}/phases.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane phases {input} --out {output} > {log} 2>&1"


rule family_phases:
    input:
        family_inputs,
    output:
        report(
            "results/{experiment}/phases/{family}.csv",
            caption="../report/phases.rst",
            category="{experiment}",
            subcategory="phases and verdicts",
            labels={"table": "family {family}"},
        ),
    log:
        "logs/{experiment}/phases-{family}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane phases {input} --out {output} > {log} 2>&1"


rule plot_family:
    input:
        family_inputs,
    output:
        train=report(
            "results/{experiment}/plots/families/{family}/family_train.png",
            caption="../report/family.rst",
            category="{experiment}",
            subcategory="family {family}",
            labels={"figure": "family, train probe"},
        ),
        test=report(
            "results/{experiment}/plots/families/{family}/family_test.png",
            caption="../report/family.rst",
            category="{experiment}",
            subcategory="family {family}",
            labels={"figure": "family, test probe"},
        ),
    params:
        out_dir=lambda w, output: os.path.dirname(output.train),
    log:
        "logs/{experiment}/plot-family-{family}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane plot --family {input} --title {wildcards.family:q} "
        "--out-dir {params.out_dir} > {log} 2>&1"
