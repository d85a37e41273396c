# TEAMs family: its evaluations and paper tables (MoA triplets, Tables 2–6, Fig. 5).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has. Append the tables/figures `rule all` builds to RESULT_TABLES / FIGURE_NAMES.
