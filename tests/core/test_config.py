import pytest

from usad.core.config import DEFAULT_CONFIG, ConfigError, load_config, parse_override


def test_defaults_are_the_paper_values():
    cfg = load_config()
    assert cfg.seed == 22
    assert (cfg.maclu.image_size, cfg.ma2patch.image_size, cfg.patchcore.image_size, cfg.data.eval_size) == (350, 406, 238, 406)
    assert (cfg.maclu.tau, cfg.maclu.sigma, cfg.maclu.n_clusters) == (1.14, 4.0, 2)
    assert (cfg.patchcore.coreset_ratio, cfg.patchcore.projection_eps, cfg.patchcore.k_nearest, cfg.patchcore.train_ratio) == (0.01, 0.9, 3, 0.5)
    assert (cfg.fusion.lambda_obj, cfg.fusion.lambda_m) == (0.01, 1.0)
    assert cfg.maclu.backbone == "vit_small_patch14_dinov2.lvd142m"
    assert cfg.patchcore.backbone == "wide_resnet50_2"


def test_overrides_parse_yaml_and_dotted_keys():
    cfg = load_config(DEFAULT_CONFIG, ["maclu.tau=1.2", "maclu.model_kwargs={depth: 2, embed_dim: 16}",
                                       "data.root=/tmp/x", "maclu.weights=/w.pth", "fusion.lambda_m=2"])
    assert cfg.maclu.tau == 1.2
    assert cfg.maclu.model_kwargs == {"depth": 2, "embed_dim": 16}
    assert cfg.data.root == "/tmp/x"
    assert cfg.maclu.weights == "/w.pth"
    assert cfg.fusion.lambda_m == 2.0 and isinstance(cfg.fusion.lambda_m, float)


def test_quoted_mapping_override_is_parsed():
    # the shell passes --set maclu.model_kwargs="{depth: 2}" as maclu.model_kwargs={depth: 2}
    assert parse_override("maclu.model_kwargs={depth: 2}") == {"maclu": {"model_kwargs": {"depth": 2}}}


def test_config_file_merges_onto_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("maclu:\n  tau: 1.05\ndata:\n  batch_size: 4\n")
    cfg = load_config(f, ["data.batch_size=2"])
    assert cfg.maclu.tau == 1.05 and cfg.maclu.sigma == 4.0
    assert cfg.data.batch_size == 2


@pytest.mark.parametrize("override, key", [
    ("maclu.tua=1.2", "maclu.tua"),
    ("nope=1", "nope"),
    ("patchcore.coreset.ratio=1", "patchcore.coreset"),
])
def test_unknown_key_is_an_error_naming_it(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("fusion:\n  lambda_objj: 0.1\n")
    with pytest.raises(ConfigError, match=r"fusion\.lambda_objj"):
        load_config(f)


@pytest.mark.parametrize("override", ["maclu.tau=high", "data.batch_size=2.5", "data.download=yes please",
                                      "maclu.model_kwargs=3", "maclu.weights=3", "patchcore.bank_dtype=int8",
                                      "maclu=3", "seed=true"])
def test_wrong_types_are_rejected_with_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_num_workers_is_auto_or_a_count():
    assert load_config().data.num_workers == "auto"
    assert load_config(None, ["data.num_workers=3"]).data.num_workers == 3
    for bad in ("data.num_workers=-1", "data.num_workers=many", "data.num_workers=1.5"):
        with pytest.raises(ConfigError, match=r"data\.num_workers"):
            load_config(None, [bad])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["maclu.tau"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, shown", [
    ("maclu.cov_eps=0", "(0.0, inf), got 0.0"), ("ma2patch.cov_eps=-1.0e-6", "(0.0, inf), got -1e-06"),
    ("patchcore.projection_eps=0", "(0.0, 1.0), got 0.0"), ("patchcore.projection_eps=1", "(0.0, 1.0), got 1.0"),
    ("data.batch_size=0", "[1, inf), got 0"), ("patchcore.coreset_ratio=1.5", "[0.0, 1.0], got 1.5"),
    ("maclu.image_size=0", "[14, inf), got 0"), ("maclu.n_clusters=1", "[2, inf), got 1"),
    ("patchcore.train_ratio=-0.1", "[0.0, 1.0], got -0.1"), ("patchcore.k_nearest=1", "[2, inf), got 1"),
])
def test_range_bounds_inclusive_and_exclusive(override, shown):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"config key {key!r} must be in {shown}"


def test_values_at_and_next_to_the_bounds_are_accepted():
    cfg = load_config(None, ["maclu.cov_eps=1.0e-12", "patchcore.projection_eps=0.999", "patchcore.coreset_ratio=1",
                             "patchcore.train_ratio=0", "maclu.sigma=0", "data.batch_size=1"])
    assert cfg.maclu.cov_eps == 1e-12 and cfg.patchcore.projection_eps == 0.999 and cfg.patchcore.coreset_ratio == 1.0


@pytest.mark.parametrize("value, shown", [
    ("{depth:2}", "'depth:2' is not a keyword argument name. YAML needs a space after each colon: "
                  "write maclu.model_kwargs=\"{depth: 2}\", not {depth:2}"),
    ("{depth:2, embed_dim: 16}", "'depth:2' is not a keyword argument name"),
    ("{depth: }", "'depth' has no value (null)"),
    ("{depth: null}", "'depth' has no value (null)"),
    ("{1: 2}", "1 is not a keyword argument name"),
])
def test_model_kwargs_without_values_are_rejected(value, shown):
    # timm drops keyword arguments whose value is None: {depth:2} would silently train a full-size ViT
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"maclu.model_kwargs={value}"])
    assert str(err.value).startswith("config key 'maclu.model_kwargs': ") and shown in str(err.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_forms_accepted_by_the_config(device):
    assert load_config(None, [f"device={device}"]).device == device


@pytest.mark.parametrize("device", ["banana", "CUDA", "cuda:", "cuda:x", "cuda:-1", "gpu", "cpu "])
def test_bad_device_names_the_key_and_the_choices(device):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"device='{device}'"])
    assert str(err.value) == (f"config key 'device' must be one of auto | cpu | cuda | cuda:N (N = GPU index, "
                              f"e.g. cuda:0), got {device!r}")


def test_method_sections_come_from_configs_methods(tmp_path):
    """Each configs/methods/<name>.yaml is the section <name> of the schema: its keys are settable, unknown
    ones are errors, and a null default takes a path string or null, also after a config file set a path."""
    import yaml

    from usad.core.config import METHOD_CONFIGS

    files = sorted(METHOD_CONFIGS.glob("*.yaml"))
    assert files, "no method defaults in configs/methods"
    cfg = load_config()
    for f in files:
        assert cfg[f.stem].to_dict() == (yaml.safe_load(f.read_text()) or {})
    name = files[0].stem
    with pytest.raises(ConfigError, match=f"unknown config key '{name}.no_such_key'"):
        load_config(None, [f"{name}.no_such_key=1"])
    path_keys = [(f.stem, k) for f in files for k, v in (yaml.safe_load(f.read_text()) or {}).items() if v is None]
    assert path_keys, "no null-default (path) key in any method file"
    sec, key = path_keys[0]
    config = tmp_path / "c.yaml"
    config.write_text(f"{sec}:\n  {key}: /some/file.pt\n")
    assert load_config(config)[sec][key] == "/some/file.pt"
    assert load_config(config, [f"{sec}.{key}=null"])[sec][key] is None
    with pytest.raises(ConfigError, match="path string or null"):
        load_config(config, [f"{sec}.{key}=3"])
