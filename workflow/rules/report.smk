# Invariant checks of every preset's stacked estimates (0 <= S <= log2 N, I(X;T) <= min(S(X),
# S(T)), I(T;Y) <= S(Y), ...). A violation fails the job, the offending points listed in its log;
# the check's text is part of the report. Build the report after a run with
#   snakemake --workflow-profile workflow/profiles/local --report report.html


rule check:
    input:
        "results/{experiment}/mi/{preset}.zarr",
    output:
        report(
            "results/{experiment}/checks/{preset}.txt",
            caption="../report/check.rst",
            category="{experiment}",
            subcategory="{preset}",
            labels={"figure": "8 invariant check"},
        ),
    log:
        "logs/{experiment}/check-{preset}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m infoplane check {input} > {log} 2>&1 && cp {log} {output}"
