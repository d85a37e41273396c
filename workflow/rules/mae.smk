# MAE family (MAE-ViT, CA-MAE, MU-Net, WSL, ImageNet ViTs): its figures and paper tables
# (reconstructions, loss curves, recall vs training FLOPs, R² per category MAE vs WSL).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has. Append the tables/figures `rule all` builds to RESULT_TABLES / FIGURE_NAMES.
#   results/training_cost.tsv                            every trained method: crops seen, training FLOPs
#   results/figures/reconstructions_{dataset}_{method}.png   masked input / reconstruction / original
#   results/figures/mae_loss_curves.png                  loss vs crops seen, with/without Fourier loss
#   results/figures/recall_vs_training_flops.png         recall vs training FLOPs (trained methods)
#   results/figures/cp_r2_mae_vs_wsl.png                 median R² per CellProfiler category, MAE vs WSL

import re  # noqa: E402

MAE_RECON_MODELS = ("mae_vit", "ca_mae", "mu_net")  # models that reconstruct images
MAE_FOURIER_MODELS = ("mae_vit", "ca_mae")
WSL_MODELS = ("wsl_densenet", "wsl_vit")


MAE_TRAINED = [n for n in METHODS if _trained_here(n)]
MAE_RECON = [n for n in MAE_TRAINED if METHODS[n].method.model in MAE_RECON_MODELS]
MAE_CURVES = [n for n in MAE_TRAINED if METHODS[n].method.model in MAE_FOURIER_MODELS]
MAE_R2 = [n for n in EVAL_LISTS["cp_regression"] if METHODS[n].method.model in MAE_RECON_MODELS + WSL_MODELS]


rule training_cost:
    """Crops seen and training FLOPs (MAE-W A.3 convention) of every trained method, from its log."""
    input:
        [f"results/{d}/models/{m}/train_log.tsv" for d in DATASETS for m in MAE_TRAINED],
    output:
        report(
            "results/training_cost.tsv",
            caption="../report/training_cost.rst",
            category=report_category("training_cost"),
            subcategory="Tables",
            labels=report_labels("table", "training_cost"),
        ),
    params:
        logs=" ".join(shlex.quote(f"{d}:{m}:{METHODS[m].method.family}=results/{d}/models/{m}/train_log.tsv")
                      for d in DATASETS for m in MAE_TRAINED),
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/training_cost.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures.mae training-cost --logs {params.logs} --out {output} "
        "--config-hash {params.cfg} --methods {params.methods} 2> {log}"


rule mae_reconstructions:
    """MAE-W Fig. 1 / MAE-CVPR Fig. 2: reconstructions of validation tiles by one trained MAE."""
    input:
        model="results/{dataset}/models/{method}/model.pt",
        crops=lambda w: f"results/{w.dataset}/crops/{METHODS[w.method].method.crop_kind}/index.parquet",
        split=lambda w: f"results/{w.dataset}/splits/{METHODS[w.method].method.split}.tsv",
    output:
        report(
            "results/figures/reconstructions_{dataset}_{method}.png",
            caption="../report/mae_reconstructions.rst",
            category=report_category("reconstructions"),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", f"reconstructions_{w.dataset}_{w.method}", "reconstructions"),
        ),
    wildcard_constraints:
        method="|".join(re.escape(m) for m in MAE_RECON) or "^$",
    log:
        "logs/figures/reconstructions_{dataset}_{method}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures.mae reconstructions --model {input.model} --crops {input.crops} "
        "--split {input.split} --out {output} 2> {log}"


rule mae_loss_curves:
    """MAE-CVPR Fig. 3: loss curves of the MAEs with (solid) and without (dashed) the Fourier loss."""
    input:
        [f"results/{d}/models/{m}/train_log.tsv" for d in DATASETS for m in MAE_CURVES],
    output:
        report(
            "results/figures/mae_loss_curves.png",
            caption="../report/mae_loss_curves.rst",
            category=report_category("mae_loss_curves"),
            subcategory="Figures",
            labels=report_labels("figure", "mae_loss_curves"),
        ),
    params:
        logs=" ".join(shlex.quote(f"{m}" + (f" ({d})" if len(DATASETS) > 1 else "")
                                  + f"=results/{d}/models/{m}/train_log.tsv") for d in DATASETS for m in MAE_CURVES),
    log:
        "logs/figures/mae_loss_curves.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures.mae loss-curves --logs {params.logs} --out {output} 2> {log}"


rule recall_vs_training_flops:
    """MAE-W Figs. 2/4, MAE-CVPR Fig. 5 (left): recall vs training FLOPs of the trained methods."""
    input:
        known="results/known_relationships.tsv",
        cost="results/training_cost.tsv",
    output:
        report(
            "results/figures/recall_vs_training_flops.png",
            caption="../report/recall_vs_training_flops.rst",
            category=report_category("recall_vs_training_flops"),
            subcategory="Figures",
            labels=report_labels("figure", "recall_vs_training_flops"),
        ),
    log:
        "logs/figures/recall_vs_training_flops.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures.mae recall-vs-flops --known {input.known} --cost {input.cost} "
        "--out {output} 2> {log}"


rule cp_r2_mae_vs_wsl:
    """MAE-CVPR Fig. 6: median R² per CellProfiler category, the MAE vs the WSL models."""
    input:
        "results/cp_regression_summary.tsv",
    output:
        report(
            "results/figures/cp_r2_mae_vs_wsl.png",
            caption="../report/cp_r2_mae_vs_wsl.rst",
            category=report_category("cp_r2_mae_vs_wsl"),
            subcategory="Figures",
            labels=report_labels("figure", "cp_r2_mae_vs_wsl"),
        ),
    params:
        methods=" ".join(shlex.quote(m) for m in MAE_R2),
    log:
        "logs/figures/cp_r2_mae_vs_wsl.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures.mae r2-mae-vs-wsl --table {input} --methods {params.methods} "
        "--out {output} 2> {log}"


if MAE_TRAINED:
    RESULT_TABLES.append("training_cost")
    FIGURE_NAMES.append("recall_vs_training_flops")
FIGURE_NAMES.extend(f"reconstructions_{d}_{m}" for d in DATASETS for m in MAE_RECON)
if MAE_CURVES:
    FIGURE_NAMES.append("mae_loss_curves")
if any(METHODS[m].method.model in WSL_MODELS for m in MAE_R2) and any(
        METHODS[m].method.model in MAE_RECON_MODELS for m in MAE_R2):
    FIGURE_NAMES.append("cp_r2_mae_vs_wsl")
