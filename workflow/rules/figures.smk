# Paper figures as Snakemake targets: one `snakemake` call regenerates every plot from the tables.

FIGURES = {
    # figure name: (morphobench.figures subcommand, results table)
    "recall_curves": ("recall-curves", "results/recall_curve.tsv"),  # MAE-CVPR Fig. 5 right
    "recall_by_method": ("recall-by-method", "results/known_relationships.tsv"),  # Table 3 layout
    "retrieval": ("retrieval", "results/jump_retrieval.tsv"),  # Table 4 layout
    "cp_regression_r2": ("r2", "results/cp_regression_summary.tsv"),  # Fig. 6
    "batch_correction": ("batch-correction", "results/batch_correction.tsv"),  # Table 2
}


rule figure:
    input:
        lambda w: FIGURES[w.figure][1],
    output:
        report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category=lambda w: report_category(w.figure),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", w.figure),
        ),
    wildcard_constraints:
        figure="|".join(FIGURES),
    params:
        kind=lambda w: FIGURES[w.figure][0],
    log:
        "logs/figures/{figure}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures {params.kind} --table {input} --out {output} 2> {log}"
