"""`snakemake --report` (every figure and results table with its caption) and `snakemake --lint`
on the real Snakefile."""

from __future__ import annotations

import re

import pytest

from test_workflow import REPO, snakemake

pytestmark = pytest.mark.workflow

# every branch of the captions of rules with a name wildcard (wildcard, values)
BRANCHES = {
    "figure.rst": ("figure", ["recall_curves", "recall_by_method", "retrieval", "cp_regression_r2",
                              "batch_correction"]),
    "gather_table.rst": ("table", ["known_relationships", "recall_curve", "stringdb_gene_sets", "jump_retrieval",
                                   "cp_regression", "batch_correction_recall"]),
    "teams_gather.rst": ("table", ["moa_triplets", "teams_expert_modes", "teams_heldout_groups"]),
    "teams_table.rst": ("table", [f"teams_table{i}" for i in range(2, 7)]),
    "teams_figure.rst": ("table", [f"teams_table{i}" for i in range(2, 7)]),
    "campfire_gather.rst": ("cftable", ["campfire_probes", "zprime"]),
    "campfire_figure.rst": ("cffigure", ["campfire_probes", "campfire_channel_sets", "zprime"]),
}


def _render(path, wildcards, params=None, config=None):
    """A caption as Snakemake's report renders it (Jinja, then reStructuredText → HTML), with any
    reStructuredText warning an error."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    snake = SimpleNamespace(wildcards=SimpleNamespace(**wildcards), params=SimpleNamespace(**(params or {})),
                            config=config or {})
    rst = env.from_string(path.read_text()).render(snakemake=snake, categories={}, files=[])
    return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["body"]


def test_every_caption_renders():
    """Every caption file and every branch of those shared by several outputs (those not in the
    tiny run included): valid Jinja and reStructuredText, a text of its own."""
    import yaml

    from morphobench import methods

    from snakemake.utils import validate

    report = REPO / "workflow" / "report"
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, methods.config_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    assert "morphobench" in _render(report / "workflow.rst", {}, config=cfg)
    wildcards = {"dataset": "simulated", "method": "teams"}
    seen = set()
    for path in sorted(report.glob("*.rst")):
        if path.name == "workflow.rst":
            continue
        name, values = BRANCHES.get(path.name, (None, [None]))
        texts = set()
        for v in values:
            w = {**wildcards, **({name: v} if name else {})}
            html = _render(path, w, params={"method": "cellprofiler"})
            assert len(html) > 150, (path.name, v)
            texts.add(html)
        assert len(texts) == len(values), path.name  # one text per branch
        seen.add(path.name)
    assert set(BRANCHES) <= seen


def test_every_rule_output_in_results_figures_and_every_results_table_is_reported():
    """Each rule writing results/figures/*.png or results/<table>.tsv flags it for the report, with
    a caption file that exists."""
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    outputs = re.findall(r"\n    output:\n(.*?)\n    \w+:", rules, flags=re.S)
    reported = 0
    for block in outputs:
        if re.search(r'"results/(figures/[^"]+\.png|\{\w+\}\.tsv|[a-z_0-9]+\.tsv)"', block):
            assert "report(" in block, block
            cap = re.search(r'caption="\.\./report/([\w]+\.rst)"', block)
            assert cap and (REPO / "workflow" / "report" / cap.group(1)).exists(), block
            reported += 1
    assert reported >= 15
    assert (REPO / "workflow" / "report" / "workflow.rst").exists()


def test_lint_finds_nothing(tmp_path):
    res = snakemake(tmp_path, "--lint", timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Lints for" not in out, out[-5000:]
    assert "Congratulations" in out
