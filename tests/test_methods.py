"""The method registry: checks, config resolution, bring-your-own entries, schema enums, plugins,
and the timm bring-your-own network."""

from __future__ import annotations

import logging

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from morphobench import methods
from morphobench.io import MorphobenchError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_registry_entries_are_consistent():
    assert {"random", "pixel_stats", "cellprofiler"} <= set(methods.REGISTRY)
    for name, m in methods.REGISTRY.items():
        assert m.name == name and m.input in methods.INPUTS and m.level in methods.LEVELS
        assert m.description and m.paper, name
        if m.trains:
            assert m.model and m.split and m.crop_kind and m.embed == methods.TRAINED_EMBED
            from morphobench.training.splits import SPLITS

            assert m.split in SPLITS, name
        assert m.embed or m.parts, name


def test_registry_imports_without_torch():
    code = ("import sys; import morphobench.methods as m; import morphobench.training.splits; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(m.REGISTRY))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_schema_method_enum_comes_from_the_registry_only():
    static = yaml.safe_load(SCHEMA.read_text())
    assert "enum" not in static["$defs"]["method_name"]  # no hand-typed list that could drift
    assert static["properties"]["methods"]["items"]["oneOf"][0] == {"$ref": "#/$defs/method_name"}
    for key in ("cp_regression", "batch_correction"):
        assert "random" not in json.dumps(static["properties"]["evaluate"]["properties"][key])
    filled = json.loads(Path(methods.config_schema(SCHEMA)).read_text())
    assert filled["$defs"]["method_name"]["enum"] == sorted(methods.REGISTRY) + ["all"]
    assert Path(methods.config_schema(SCHEMA)) == Path(methods.config_schema(SCHEMA))  # cached by content


def test_all_stands_for_every_registered_method():
    """`all` = every registered method that needs no user file (those are left out, said so)."""
    runnable = [n for n, m in methods.REGISTRY.items() if not m.needs]
    names = [c.name for c in methods.resolve(["all"])]
    assert names == runnable
    mixed = methods.resolve([{"name": "random", "params": {"dim": 8}}, "all",
                             {"name": "mine", "kind": "embeddings", "path": "p"}])
    assert [c.name for c in mixed] == ["random", *[n for n in runnable if n != "random"], "mine"]
    assert mixed[0].overrides == {"dim": 8}
    cfg = yaml.safe_load((REPO / "config" / "all_methods.yaml").read_text())
    assert "all" in cfg["methods"]


def test_a_method_that_needs_a_file(tmp_path, caplog):
    """transfer_effnet needs ImageNet weights: `all` leaves it out (saying so); listed without
    them it is an error naming the parameter; a missing file is an error before the run."""
    assert methods.REGISTRY["transfer_effnet"].needs
    with caplog.at_level(logging.WARNING, logger="morphobench.methods"):
        names = [c.name for c in methods.resolve(["all"])]
    assert "transfer_effnet" not in names
    assert "leaves out transfer_effnet: params.weights" in caplog.text
    with pytest.raises(MorphobenchError, match=r"transfer_effnet.*params.weights"):
        methods.resolve(["transfer_effnet"])
    c = methods.resolve([{"name": "transfer_effnet", "params": {"weights": "w/effnet.pth"}}])
    assert methods.needed_files(c[0]) == {"weights": "w/effnet.pth"}
    with pytest.raises(MorphobenchError, match="file not found"):
        methods.check_files(c, ["simulated"], base=tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "effnet.pth").write_bytes(b"x")
    methods.check_files(c, ["simulated"], base=tmp_path)
    # all + the method listed with its file: it runs, in registry order
    both = methods.resolve(["all", {"name": "transfer_effnet", "params": {"weights": "w/effnet.pth"}}])
    assert "transfer_effnet" in [x.name for x in both]


def test_resolve_names_params_and_user_entries(tmp_path):
    cfg = methods.resolve(["random", {"name": "pixel_stats"}, {"name": "random2", "kind": "embeddings", "path": "x.parquet"},
                           {"name": "net", "kind": "timm", "arch": "resnet18", "weights": "random", "input": "tile256"}])
    assert [c.name for c in cfg] == ["random", "pixel_stats", "random2", "net"]
    assert cfg[2].method.kind == "embeddings" and cfg[2].method.level == "well"
    assert cfg[3].method.level == "tile" and cfg[3].method.crop_kind == "tile256"
    spec = methods.resolve([{"name": "random", "params": {"dim": 16}}])[0].spec()
    assert spec["params"] == {"dim": 16, "seed": 0} and spec["embed"].endswith("embed_random")


@pytest.mark.parametrize(("entries", "needle"), [
    (["nope"], r"methods\[0\]: unknown method 'nope'"),
    (["random", "random"], "listed twice"),
    ([{"name": "random", "params": {"dims": 3}}], "unknown parameter 'dims'"),
    ([{"name": "random", "param": {}}], "unknown key"),
    ([{"name": "x", "kind": "zip"}], "kind must be one of"),
    ([{"name": "x", "kind": "embeddings"}], "needs path"),
    ([{"name": "x", "kind": "timm", "weights": "random"}], "needs arch"),
    ([{"name": "x", "kind": "timm", "arch": "resnet18"}], "needs weights"),
    ([{"name": "x", "kind": "timm", "arch": "resnet18", "weights": "random", "input": "site"}], "crop kind"),
    ([{"name": "x", "kind": "embeddings", "path": "p", "arch": "a"}], "unknown key"),
    ([{"name": "random", "kind": "embeddings", "path": "p"}], "registered method"),
    ([{"name": "bad name", "kind": "embeddings", "path": "p"}], "letters, digits"),
    ([], "no methods"),
])
def test_resolve_errors_name_the_entry(entries, needle):
    with pytest.raises(MorphobenchError, match=needle):
        methods.resolve(entries)


def test_bring_your_own_files_must_exist(tmp_path):
    cfg = methods.resolve([{"name": "mine", "kind": "embeddings", "path": str(tmp_path / "{dataset}.parquet")}])
    with pytest.raises(MorphobenchError, match=r"method mine: embeddings file not found: .*ds1.parquet"):
        methods.check_files(cfg, ["ds1"])
    (tmp_path / "ds1.parquet").write_bytes(b"x")
    methods.check_files(cfg, ["ds1"])
    net = methods.resolve([{"name": "net", "kind": "timm", "arch": "resnet18", "weights": str(tmp_path / "w.pth")}])
    with pytest.raises(MorphobenchError, match=r"method net: weights file not found: .*w.pth"):
        methods.check_files(net, ["ds1"])
    methods.check_files(methods.resolve([{"name": "net", "kind": "timm", "arch": "resnet18", "weights": "random"}]),
                        ["ds1"])


def test_evaluation_lists():
    conf = {c.name: c for c in methods.resolve(["random", "pixel_stats", "cellprofiler"])}
    ev = methods.evaluation_lists({"evaluate": {"cp_regression": {"methods": "all"},
                                               "batch_correction": {"method": "cellprofiler"}}}, conf)
    assert ev == {"all": ["random", "pixel_stats", "cellprofiler"], "cp_regression": ["random", "pixel_stats"],
                  "batch_correction": "cellprofiler"}
    with pytest.raises(MorphobenchError, match=r"cp_regression.methods\[1\]: 'mae' is not one of the configured"):
        methods.evaluation_lists({"evaluate": {"cp_regression": {"methods": ["random", "mae"]}}}, conf)
    with pytest.raises(MorphobenchError, match="batch_correction.method: 'teamz'"):
        methods.evaluation_lists({"evaluate": {"batch_correction": {"method": "teamz"}}}, conf)
    only_random = {c.name: c for c in methods.resolve(["random"])}  # a registered method may be the target
    assert methods.evaluation_lists({"evaluate": {"batch_correction": {"method": "cellprofiler"}}},
                                    only_random)["batch_correction"] == "cellprofiler"


def test_wildcard_regex_escapes_and_orders_longest_first():
    import re

    conf = methods.resolve(["random", {"name": "m+1", "kind": "embeddings", "path": "p"}])
    rx = re.compile(f"^(?:{methods.wildcard_regex(conf)})$")
    assert rx.match("m+1") and rx.match("pixel_stats") and not rx.match("m11") and not rx.match("random/x")


def test_trained_methods_take_training_parameters_and_train_settings():
    m = methods.Method("t", "test", input="cell128", level="cell", trains=True, model="x:y", split="treatment_folds",
                       defaults={"dim": 4})
    c = methods.Configured(m, {"epochs": 3, "device": "cpu"})
    spec = c.spec({"device": "cuda", "compile": True})
    assert spec["params"] == {"dim": 4, "epochs": 3, "device": "cpu", "compile": True}
    with pytest.raises(MorphobenchError, match="unknown parameter 'epoch'"):
        m.params({"epoch": 3})


def test_plugin_modules_register_methods(tmp_path):
    env = dict(os.environ, MORPHOBENCH_PLUGINS="tiny_method", PYTHONPATH=str(REPO / "tests" / "plugins"))
    code = "import morphobench.methods as m; print(m.get('tiny_ae').model)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "tiny_model:tiny_ae", res.stderr
    env["MORPHOBENCH_PLUGINS"] = "no_such_plugin"
    res = subprocess.run([sys.executable, "-c", "import morphobench.methods"], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "MORPHOBENCH_PLUGINS: cannot import 'no_such_plugin'" in res.stderr


def test_cli_lists_methods():
    res = subprocess.run([sys.executable, "-m", "morphobench", "methods", "--tsv"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(__import__("io").StringIO(res.stdout), sep="\t")
    # the registry of this process may also hold the test plugin's tiny_ae (registered by other tests)
    assert list(table["name"]) == [n for n in methods.REGISTRY if n != "tiny_ae"]


# ------------------------------------------------------------------------------------------------
# bring your own timm network
# ------------------------------------------------------------------------------------------------
def test_timm_weights_are_adapted_loaded_and_checked(tmp_path):
    import morphobench.models  # noqa: F401  (torchvision/timm on CPU-only torch)
    import timm
    import torch

    from morphobench.embed.timm_embed import build_timm

    torch.manual_seed(5)
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=3)
    torch.save(rgb.state_dict(), tmp_path / "w.pth")
    net = build_timm("net", "resnet18", str(tmp_path / "w.pth"), in_chans=5)
    from timm.models import adapt_input_conv

    torch.testing.assert_close(net.conv1.weight, adapt_input_conv(5, rgb.conv1.weight))
    torch.testing.assert_close(net.layer4[1].bn2.weight, rgb.layer4[1].bn2.weight)
    x = torch.randn(2, 5, 32, 32)
    assert net(x).shape == (2, 512)
    torch.save({"state_dict": rgb.state_dict()}, tmp_path / "ckpt.pth")  # checkpoint holding a state_dict
    net2 = build_timm("net", "resnet18", str(tmp_path / "ckpt.pth"), in_chans=5)
    torch.testing.assert_close(net2(x), net(x))
    rnd = build_timm("net", "resnet18", "random", in_chans=5)
    assert not torch.allclose(rnd.conv1.weight, net.conv1.weight)
    with pytest.raises(MorphobenchError, match="method net: timm does not know architecture 'resnet19'"):
        build_timm("net", "resnet19", "random", in_chans=5)
    with pytest.raises(MorphobenchError, match="method net: weights file not found"):
        build_timm("net", "resnet18", str(tmp_path / "none.pth"), in_chans=5)
    torch.save({"a": np.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(MorphobenchError, match=r"method net: cannot read weights file .*bad.pth|holds no state_dict"):
        build_timm("net", "resnet18", str(tmp_path / "bad.pth"), in_chans=5)
    torch.save(timm.create_model("resnet34", num_classes=0).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(MorphobenchError, match=r"does not fit timm 'resnet18'|size mismatch"):
        build_timm("net", "resnet18", str(tmp_path / "r34.pth"), in_chans=5)


def test_all_methods_config_is_the_default_with_every_method():
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    every = yaml.safe_load((REPO / "config" / "all_methods.yaml").read_text())
    assert every.pop("methods") == ["all"]
    default.pop("methods")
    assert every == default
