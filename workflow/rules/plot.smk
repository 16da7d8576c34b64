# Figures of every preset's stacked estimates, the comparison of an experiment's presets (when it
# names more than one) and the training curves of every experiment, each flagged for the report
# with its caption (workflow/report/*.rst).


rule plot_estimates:
    input:
        mi="results/{experiment}/mi/{preset}.zarr",
    output:
        overview=report(
            "results/{experiment}/plots/{preset}/information_plane.png",
            caption="../report/information_plane.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "1 information plane, all layers"},
        ),
        train=report(
            "results/{experiment}/plots/{preset}/information_plane_train.png",
            caption="../report/information_plane_layers.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "2 information plane per layer, train probe"},
        ),
        test=report(
            "results/{experiment}/plots/{preset}/information_plane_test.png",
            caption="../report/information_plane_layers.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "3 information plane per layer, test probe"},
        ),
        mi_epoch=report(
            "results/{experiment}/plots/{preset}/mi_epoch.png",
            caption="../report/mi_epoch.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "4 MI against epoch"},
        ),
        widths=report(
            "results/{experiment}/plots/{preset}/widths.png",
            caption="../report/widths.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "5 kernel widths"},
        ),
        data_processing=report(
            "results/{experiment}/plots/{preset}/data_processing.png",
            caption="../report/data_processing.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "6 data-processing check"},
        ),
        table=report(
            "results/{experiment}/plots/{preset}/data_processing.csv",
            caption="../report/data_processing_table.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "7 data-processing shares (table)"},
        ),
    params:
        out_dir=lambda w, output: os.path.dirname(output.overview),
    log:
        "logs/{experiment}/plot-{preset}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane plot {input.mi} --out-dir {params.out_dir} > {log} 2>&1"


rule plot_comparison:
    input:
        comparison_inputs,
    output:
        train=report(
            "results/{experiment}/plots/comparison_train.png",
            caption="../report/comparison.rst",
            category="{experiment}",
            subcategory="comparison of presets",
            labels={"figure": "estimators compared, train probe"},
        ),
        test=report(
            "results/{experiment}/plots/comparison_test.png",
            caption="../report/comparison.rst",
            category="{experiment}",
            subcategory="comparison of presets",
            labels={"figure": "estimators compared, test probe"},
        ),
    params:
        out_dir=lambda w, output: os.path.dirname(output.train),
    log:
        "logs/{experiment}/plot-comparison.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane plot --compare {input} --out-dir {params.out_dir} > {log} 2>&1"


rule plot_training:
    input:
        metrics=metrics_inputs,
    output:
        report(
            "results/{experiment}/plots/training.png",
            caption="../report/training.rst",
            category="{experiment}",
            subcategory="training",
            labels={"figure": "loss and accuracy"},
        ),
    params:
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        "logs/{experiment}/plot-training.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane plot --metrics {input.metrics} --out-dir {params.out_dir} "
        "--title {wildcards.experiment:q} > {log} 2>&1"
