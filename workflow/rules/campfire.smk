# Campfire family: its splits, linear probes, channel studies and Z′ (tables and figures).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has. Append the tables/figures `rule all` builds to RESULT_TABLES / FIGURE_NAMES.
