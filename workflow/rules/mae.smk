# MAE family (MAE-ViT, CA-MAE, MU-Net, WSL, ImageNet ViTs): its figures and paper tables
# (reconstructions, loss curves, recall vs training FLOPs, R² per category MAE vs WSL).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has. Append the tables/figures `rule all` builds to RESULT_TABLES / FIGURE_NAMES.
