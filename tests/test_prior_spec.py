import dataclasses
import json

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from sqs_pyro.prior_spec import GuideSettings, LayerSettings, PriorSettings, PriorSpec, is_compressible


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.proj = nn.Conv1d(8, 8, 1)
        self.classifier = nn.Linear(8, 10)

    def forward(self, x):
        h = self.features(x).flatten(2)
        return self.classifier(self.proj(h).flatten(1))


class MyConv(nn.Conv2d):
    pass


@pytest.fixture
def cnn():
    return SmallCNN()


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99
    )
    return transformers.BertModel(config)


SPEC = {
    "_default": {"num_components": 8, "slab_scale": 2.0},
    "re:features\\.\\d+": {"inclusion_prob": 0.1},
    "type:Linear": {"slab": "laplace", "init_rho": None},
    "features.3": {"num_components": 4, "window": "outlier", "blocks": 5},
    "proj": None,
}


# ---------------------------------------------------------------------------
# PriorSettings, GuideSettings, LayerSettings


def test_settings_defaults():
    p, g = PriorSettings(), GuideSettings()
    assert (p.inclusion_prob, p.slab, p.slab_scale, p.spike, g.num_components) == (0.01, "normal", 3.0, True, 16)
    assert (g.gate_temperature, g.tau, g.init_rho, g.window, g.blocks) == (0.01, 1e-3, None, "layer", 4)
    assert (g.outlier_factor, g.tails, g.train_anchors) == (5.0, "gmm", False)
    assert LayerSettings() == LayerSettings(p, g)


def test_settings_round_trip_and_normalization():
    s = LayerSettings.from_dict({"slab_scale": 2, "num_components": 4, "init_rho": 0})
    assert isinstance(s.prior.slab_scale, float) and isinstance(s.guide.init_rho, float)
    assert LayerSettings.from_dict(s.to_dict()) == s
    assert PriorSettings.from_dict(s.prior.to_dict()) == s.prior
    assert GuideSettings.from_dict(s.guide.to_dict()) == s.guide
    assert GuideSettings.from_dict({"init_rho": "auto"}).init_rho is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prior.slab = "laplace"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.guide = GuideSettings()


def test_prior_and_guide_fields_are_apart():
    # the prior's fields are what the model reads, the guide's what the guide reads; none in both
    prior = {f.name for f in dataclasses.fields(PriorSettings)}
    guide = {f.name for f in dataclasses.fields(GuideSettings)}
    assert prior == {"inclusion_prob", "slab", "slab_scale", "slab_df", "spike"}
    assert not prior & guide and "num_components" in guide and "window" in guide
    assert set(LayerSettings().to_dict()) == prior | guide
    with pytest.raises(ValueError, match=r"'num_components' is not a prior setting: it belongs to GuideSettings"):
        PriorSettings.from_dict({"num_components": 4})
    with pytest.raises(ValueError, match=r"'slab' is not a guide setting: it belongs to PriorSettings"):
        GuideSettings.from_dict({"slab": "laplace"})
    with pytest.raises(ValueError, match="takes a PriorSettings and a GuideSettings"):
        LayerSettings(GuideSettings(), PriorSettings())


@pytest.mark.parametrize(
    "slab, cls, kwargs",
    [
        ("normal", dist.Normal, {}),
        ("laplace", dist.Laplace, {}),
        ("studentt", dist.StudentT, {"slab_df": 5.0}),
    ],
)
def test_slab_distribution(slab, cls, kwargs):
    d = PriorSettings(slab=slab, slab_scale=1.5, **kwargs).slab_distribution()
    assert isinstance(d, cls)
    assert float(d.scale) == 1.5 and float(d.loc) == 0.0
    if slab == "studentt":
        assert float(d.df) == 5.0
    assert d.log_prob(torch.tensor(0.3)).shape == ()
    like = torch.zeros(2, dtype=torch.float64)
    assert PriorSettings(slab=slab).slab_distribution(like).scale.dtype == torch.float64


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("inclusion_prob", 1.0, "(0, 1)"),
        ("inclusion_prob", 0, "(0, 1)"),
        ("slab", "gauss", "'normal', 'laplace', 'studentt'"),
        ("slab_scale", -1.0, "> 0"),
        ("slab_scale", float("inf"), "> 0"),
        ("slab_df", 0.0, "> 0"),
        ("num_components", 0, ">= 1"),
        ("num_components", 4.0, ">= 1"),
        ("num_components", True, ">= 1"),
        ("gate_temperature", 0.0, "> 0"),
        ("tau", "1e-3", "> 0"),
        ("init_rho", "big", "None or 'auto'"),
        ("window", "rows", "'layer', 'equal', 'outlier'"),
        ("blocks", 0, ">= 1"),
        ("outlier_factor", -5, "> 0"),
        ("tails", "fp", "'gmm', 'full'"),
        ("train_anchors", 1, "True or False"),
    ],
)
def test_settings_bad_value(key, value, allowed):
    with pytest.raises(ValueError) as e:
        LayerSettings.from_dict({key: value})
    assert key in str(e.value) and repr(value) in str(e.value) and allowed in str(e.value)


def test_settings_outlier_needs_three_blocks():
    GuideSettings(window="outlier", blocks=3)
    with pytest.raises(ValueError, match=r"blocks=2.*window='outlier'.*>= 3"):
        GuideSettings(window="outlier", blocks=2)


def test_settings_unknown_key():
    with pytest.raises(ValueError, match=r"'slab_sclae'.*did you mean 'slab_scale'.*inclusion_prob"):
        LayerSettings.from_dict({"slab_sclae": 1.0})
    with pytest.raises(ValueError, match=r"'slab_sclae'.*did you mean 'slab_scale'"):
        PriorSettings.from_dict({"slab_sclae": 1.0})
    with pytest.raises(ValueError, match="mapping"):
        LayerSettings.from_dict([("slab", "normal")])


# ---------------------------------------------------------------------------
# resolution


def test_is_compressible(cnn):
    names = [n for n, m in cnn.named_modules() if is_compressible(m)]
    assert names == ["features.0", "features.3", "proj", "classifier"]
    assert is_compressible(nn.Conv3d(1, 1, 1)) and is_compressible(MyConv(1, 1, 1))
    assert not is_compressible(nn.ConvTranspose2d(1, 1, 1)) and not is_compressible(nn.Embedding(3, 2))


def test_resolve_precedence(cnn):
    resolved = PriorSpec(SPEC).resolve(cnn)
    assert list(resolved) == ["features.0.weight", "features.3.weight", "classifier.weight"]  # proj dense
    f0, f3, fc = resolved.values()
    # features.0: regex over _default
    assert (f0.prior.inclusion_prob, f0.guide.num_components, f0.prior.slab_scale, f0.prior.slab) == (0.1, 8, 2.0, "normal")
    # features.3: exact beats regex; layered over _default, not over the regex rule
    assert (f3.prior.inclusion_prob, f3.guide.num_components, f3.guide.window, f3.guide.blocks, f3.prior.slab_scale) == (
        0.01, 4, "outlier", 5, 2.0)
    # classifier: type over _default
    assert (fc.prior.slab, fc.guide.num_components, fc.prior.inclusion_prob) == ("laplace", 8, 0.01)
    for name, settings in resolved.items():
        assert isinstance(settings, LayerSettings) and cnn.get_parameter(name) is not None


def test_resolve_without_default_leaves_rest_dense(cnn):
    resolved = PriorSpec({"classifier": {}}).resolve(cnn)
    assert list(resolved) == ["classifier.weight"]
    assert resolved["classifier.weight"] == LayerSettings()


def test_default_spec_compresses_everything(cnn):
    resolved = PriorSpec().resolve(cnn)
    assert list(resolved) == ["features.0.weight", "features.3.weight", "proj.weight", "classifier.weight"]
    assert all(s == LayerSettings() for s in resolved.values())


def test_first_regex_wins(cnn):
    spec = PriorSpec({"re:features\\.0": {"num_components": 2}, "re:features.*": {"num_components": 4}})
    assert [s.guide.num_components for s in spec.resolve(cnn).values()] == [2, 4]
    spec = PriorSpec({"re:features.*": {"num_components": 4}, "re:features\\.0": {"num_components": 2}})
    assert [s.guide.num_components for s in spec.resolve(cnn).values()] == [4, 4]


def test_regex_is_fullmatch(cnn):
    with pytest.raises(ValueError, match=r"'re:feat' matches no compressible module.*'features.0'"):
        PriorSpec({"re:feat": {}}).resolve(cnn)


def test_type_selectors_follow_mro():
    net = nn.Sequential(MyConv(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv1d(2, 2, 1), nn.Linear(2, 2))
    spec = PriorSpec({"type:_ConvNd": {"num_components": 2}, "type:Conv2d": {"num_components": 4}})
    resolved = spec.resolve(net)
    # Conv2d is more specific than _ConvNd whatever the order; Linear is not a conv: dense
    assert {n: s.guide.num_components for n, s in resolved.items()} == {"0.weight": 4, "1.weight": 4, "2.weight": 2}
    assert list(PriorSpec({"type:MyConv": {}}).resolve(net)) == ["0.weight"]
    assert list(PriorSpec({"type:torch.nn.modules.linear.Linear": {}}).resolve(net)) == ["3.weight"]


@pytest.mark.parametrize("dense", [None, "dense"])
def test_dense_rules(cnn, dense):
    spec = PriorSpec({"_default": {}, "type:Conv2d": dense, "classifier": dense})
    assert list(spec.resolve(cnn)) == ["proj.weight"]
    assert spec == PriorSpec({"_default": {}, "type:Conv2d": None, "classifier": None})
    assert spec.settings("classifier") is None
    # A dense _default: only the named modules are compressed.
    assert list(PriorSpec({"_default": dense, "proj": {}}).resolve(cnn)) == ["proj.weight"]


def test_settings_instances_as_rules(cnn):
    spec = PriorSpec({"_default": {"num_components": 2, "inclusion_prob": 0.2},
                      "classifier": LayerSettings(PriorSettings(slab="laplace")),
                      "proj": PriorSettings(slab="laplace")})
    resolved = spec.resolve(cnn)
    # a full settings object overrides all
    assert resolved["classifier.weight"] == LayerSettings(PriorSettings(slab="laplace"))
    # a PriorSettings fixes all of the prior; the guide's fields come from _default
    assert resolved["proj.weight"] == LayerSettings(PriorSettings(slab="laplace"), GuideSettings(num_components=2))
    assert resolved["features.0.weight"].guide.num_components == 2


def test_tied_weights_appear_once():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    net = nn.Sequential(a, nn.Tanh(), b)
    assert list(PriorSpec().resolve(net)) == ["0.weight"]
    assert list(PriorSpec({"2": {}}).resolve(net)) == ["2.weight"]


def test_root_module():
    assert list(PriorSpec({"": {}}).resolve(nn.Linear(2, 3))) == ["weight"]


# ---------------------------------------------------------------------------
# transformers


def test_bert(bert):
    qkv = PriorSpec({"re:.*attention\\.self\\.(query|key|value)": {"num_components": 8}})
    resolved = qkv.resolve(bert)
    assert len(resolved) == 6
    assert list(resolved)[:3] == [f"encoder.layer.0.attention.self.{p}.weight" for p in ("query", "key", "value")]
    assert all(s.guide.num_components == 8 for s in resolved.values())

    # docs/method.md §8: BERT compresses Q/K/V and the attention output, nothing else.
    spec = PriorSpec(
        {
            "re:.*attention\\.self\\.(query|key|value)": {"tau": 5e-4},
            "re:.*attention\\.output\\.dense": {"tau": 5e-4, "num_components": 4},
        }
    )
    resolved = spec.resolve(bert)
    assert len(resolved) == 8
    assert sum(s.guide.num_components == 4 for s in resolved.values()) == 2
    assert "pooler.dense.weight" not in resolved

    everything = PriorSpec({"_default": {}, "pooler.dense": "dense"}).resolve(bert)
    assert len(everything) == 12 and all(bert.get_parameter(n).dim() == 2 for n in everything)
    with pytest.raises(ValueError, match="'embeddings.LayerNorm'.*LayerNorm.*not compressible"):
        PriorSpec({"embeddings.LayerNorm": {}}).resolve(bert)


def test_transformers_conv1d():
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D

    net = nn.Sequential(Conv1D(6, 4), nn.GELU(), Conv1D(4, 6))
    assert list(PriorSpec({"type:Conv1D": {}}).resolve(net)) == ["0.weight", "2.weight"]


# ---------------------------------------------------------------------------
# serialization


def test_dict_round_trip():
    spec = PriorSpec(SPEC)
    d = spec.to_dict()
    assert PriorSpec.from_dict(d) == spec
    assert PriorSpec.from_dict(d).to_dict() == d
    assert list(d) == list(SPEC)
    assert d["proj"] is None and d["type:Linear"] == {"slab": "laplace", "init_rho": None}
    assert d["_default"] == {"num_components": 8, "slab_scale": 2.0}  # partial rules stay partial
    d["_default"]["num_components"] = 2  # to_dict returns a copy
    assert spec.to_dict()["_default"]["num_components"] == 8


def test_eq_and_repr():
    spec = PriorSpec(SPEC)
    assert eval(repr(spec), {"PriorSpec": PriorSpec}) == spec
    assert spec != PriorSpec({**SPEC, "proj": {}})
    assert spec != {"_default": {}}
    # Order of exact rules is irrelevant; order of regex rules is not.
    assert PriorSpec({"a": {}, "b": None}) == PriorSpec({"b": None, "a": {}})
    assert PriorSpec({"re:a": {}, "re:b": {}}) != PriorSpec({"re:b": {}, "re:a": {}})


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml", ".json"])
def test_file_round_trip(tmp_path, cnn, suffix):
    rules = {
        're:(features|"x")\\.0': {"num_components": 4},
        "proj": None,
        "re:features.*": {"inclusion_prob": 0.05, "init_rho": None, "train_anchors": True},
        "classifier": {},
        "_default": GuideSettings(window="outlier", init_rho=0.2).to_dict(),
    }
    spec = PriorSpec(rules)
    path = tmp_path / f"prior{suffix}"
    spec.to_file(path)
    text = path.read_text()
    assert "dense" in text and "null" not in text
    back = PriorSpec.from_file(path)
    assert back == spec and back.to_dict() == spec.to_dict()
    assert list(back.to_dict()) == list(rules)  # order survives, TOML included
    assert back.resolve(cnn) == spec.resolve(cnn)
    assert PriorSpec.coerce(str(path)) == spec and PriorSpec.coerce(path) == spec
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


def test_handwritten_files(tmp_path, cnn):
    toml = tmp_path / "a.toml"
    toml.write_text(
        'classifier = "dense"\n\n[_default]\nnum_components = 4\n\n["re:features\\\\.0"]\nslab = "laplace"\n'
    )
    yml = tmp_path / "a.yaml"
    yml.write_text("classifier: dense\n_default:\n  num_components: 4\nre:features\\.0:\n  slab: laplace\n")
    js = tmp_path / "a.json"
    rules = {"classifier": None, "_default": {"num_components": 4}, "re:features\\.0": {"slab": "laplace"}}
    js.write_text(json.dumps(rules))
    specs = [PriorSpec.from_file(p) for p in (toml, yml, js)]
    assert specs[0] == specs[1] == specs[2]
    resolved = specs[0].resolve(cnn)
    assert list(resolved) == ["features.0.weight", "features.3.weight", "proj.weight"]
    assert resolved["features.0.weight"].prior.slab == "laplace" and resolved["proj.weight"].guide.num_components == 4


def test_coerce(cnn):
    spec = PriorSpec(SPEC)
    assert PriorSpec.coerce(spec) is spec
    assert PriorSpec.coerce(SPEC) == spec
    assert PriorSpec.coerce(None) == PriorSpec({"_default": {}})
    with pytest.raises(TypeError, match="int"):
        PriorSpec.coerce(3)


# ---------------------------------------------------------------------------
# errors name the offending selector / key / value


@pytest.mark.parametrize(
    "rules, pattern",
    [
        ({"features.3": {"slab_sclae": 2.0}}, r"'features.3'.*unknown prior setting 'slab_sclae'"),
        ({"features.3": {"slab": "cauchy"}}, r"'features.3'.*slab='cauchy'.*'normal', 'laplace', 'studentt'"),
        ({"_default": {"inclusion_prob": 2}}, r"'_default'.*inclusion_prob=2.*\(0, 1\)"),
        ({"_default": {"window": "outlier"}, "proj": {"blocks": 2}}, r"'proj' \(layered over '_default'\).*blocks=2"),
        ({"proj": "sparse"}, r"'proj' = 'sparse'.*None or 'dense'"),
        ({"proj": 3}, r"'proj' = 3"),
        ({3: {}}, r"selector 3 must be a string"),
        ({"re:(unclosed": {}}, r"'re:\(unclosed' is not a valid regular expression"),
        ({"type:": {}}, r"'type:' names no type"),
    ],
)
def test_bad_rules(rules, pattern):
    with pytest.raises(ValueError, match=pattern):
        PriorSpec(rules)


def test_bad_spec_type():
    with pytest.raises(ValueError, match="mapping"):
        PriorSpec([("proj", {})])


@pytest.mark.parametrize(
    "rules, pattern",
    [
        ({"features.9": {}}, r"'features.9' names no module of SmallCNN; compressible modules are 'features.3'"),
        ({"classifier.weight": {}}, r"'classifier.weight'.*did you mean 'classifier'"),
        ({"features.1": {}}, r"'features.1' names a ReLU, which is not compressible"),
        ({"features.2": None}, r"'features.2' names a BatchNorm2d"),
        ({"re:head.*": {}}, r"'re:head.\*' matches no compressible module.*'features.0', 'features.3', 'proj'"),
        ({"type:BatchNorm2d": {}}, r"'type:BatchNorm2d' matches no compressible module.*Conv1d, Conv2d, Linear"),
        ({"_default": None}, r"compresses nothing in SmallCNN"),
        ({"classifier": "dense"}, r"compresses nothing"),
    ],
)
def test_resolve_errors(cnn, rules, pattern):
    with pytest.raises(ValueError, match=pattern):
        PriorSpec(rules).resolve(cnn)


def test_resolve_no_compressible_modules():
    with pytest.raises(ValueError, match="no compressible modules"):
        PriorSpec().resolve(nn.Sequential(nn.ReLU()))


def test_lazy_module():
    with pytest.raises(ValueError, match="'0' is an uninitialized lazy module"):
        PriorSpec().resolve(nn.Sequential(nn.LazyLinear(3)))


def test_file_errors(tmp_path):
    bad_suffix = tmp_path / "prior.txt"
    with pytest.raises(ValueError, match=r"prior.txt.*unknown extension '.txt'.*\.toml"):
        PriorSpec().to_file(bad_suffix)
    bad_suffix.write_text("{}")
    with pytest.raises(ValueError, match=r"prior.txt.*unknown extension"):
        PriorSpec.from_file(bad_suffix)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        PriorSpec.from_file(tmp_path / "missing.toml")
    for name, text in [("bad.toml", "a = = 1"), ("bad.yaml", "a: [1, 2"), ("bad.json", "{'a': 1}")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"cannot parse prior spec file .*{name}"):
            PriorSpec.from_file(tmp_path / name)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"list.yaml.*must hold a mapping"):
        PriorSpec.from_file(tmp_path / "list.yaml")
    (tmp_path / "key.toml").write_text("[proj]\nslab = 'gauss'\n")
    with pytest.raises(ValueError, match=r"key.toml.*'proj'.*slab='gauss'"):
        PriorSpec.from_file(tmp_path / "key.toml")
