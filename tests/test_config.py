"""Config validation: bad values fail with one line naming the field, the value and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitray.config import ConfigError, ceil_product, load_config
from splitray.schedules import epoch_plans, reset_kind, select_lr

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr: -1 is not allowed; must be > 0"),
    ("compression.lam=1.5", "compression.lam: 1.5 is not allowed; must be <= 1"),
    ("compression.codec_up=fp4", "compression.codec_up: 'fp4' is not allowed; choose one of"),
    ("model.name=vgg99", "model.name: 'vgg99' is not allowed; choose one of"),
    ("train.algorithm=magic", "train.algorithm: 'magic' is not allowed"),
    ("clients.devices=[toaster]", "clients.devices[0]: 'toaster' is not allowed"),
    ("network.links=[carrier_pigeon]", "network.links[0]: 'carrier_pigeon' is not allowed"),
    ("schedule.phases=[{budget: 0, epochs: 1}]", "schedule.phases[0].budget: 0 is not allowed"),
    ("schedule.phases=[{budget: 4, epoch: 1}]", "schedule.phases[0].epoch: unknown key"),
    ("train.batch_size=big", "train.batch_size: 'big' is not allowed; expected an integer"),
    ("compression.enabled=false", "schedule.phases[0].budget: 4 is not allowed when"),
    ("nonsense.key=1", "nonsense: unknown key"),
    ("schedule.phases[5].budget=8", "schedule.phases[5].budget: index 5 is out of range"),
    ("compression.delta=1e-3x", "compression.delta: '1e-3x' is not allowed; expected a number"),
    ("engine.prefetch=-1", "engine.prefetch: -1 is not allowed; must be >= 0"),
    # NaN compares false with every bound, so it needs its own rule; so does infinity.
    ("compression.lam=.nan", "compression.lam: nan is not allowed; expected a finite number"),
    ("clients.cpu_share=.nan", "clients.cpu_share: nan is not allowed; expected a finite number"),
    ("train.lr=.inf", "train.lr: inf is not allowed; expected a finite number"),
    (f"train.lr=1{'0' * 310}", "is not allowed; expected a finite number"),  # beyond any float
    # YAML 1.1's octal and base-60 numbers are strings here, as in YAML 1.2.
    ("clients.count=010", "clients.count: '010' is not allowed; expected an integer"),
    ("seed=1700000000000000000", "seed: 1700000000000000000 is not allowed; must be <= 9007199254740992"),
    ("clients.num_cpus=0.00005", "clients.num_cpus: 5e-05 is not allowed; must be >= 0.0001"),
    ("server.num_gpus=0.5", "server.num_gpus: 0.5 is not allowed; choose one of auto, 0, 1"),
    ("name=a\x01b", "--set name: 'a\\x01b' is not valid YAML (unacceptable character #x0001"),
])
def test_bad_values_name_field_value_and_rule(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "experiments" / "quickstart.yaml", [override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_experiment_files_load_and_overrides_apply():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        load_config(path)
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      ["train.lr=0.5", "schedule.phases=[{budget: 8, epochs: 2}]"])
    assert cfg.train.lr == 0.5
    assert [(p.budget, p.epochs) for p in cfg.schedule.phases] == [(8, 2)]
    assert cfg.total_epochs == 2
    # List items are addressable, and YAML 1.2 floats such as 4e6 are numbers.
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      ["schedule.phases[1].epochs=5", "compression.delta=1e-2"])
    assert cfg.schedule.phases[1].epochs == 5 and cfg.compression.delta == 0.01


def test_a_written_config_reads_back_as_itself():
    from splitray.config import config_from_dict, read_yaml

    # Strings that read as numbers are written in quotes; 017 stays a string as YAML 1.2 has it.
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      ['name="1e5"', 'data.root="1e3"', "clients.count=0x10"])
    assert (cfg.name, cfg.data.root, cfg.clients.count) == ("1e5", "1e3", 16)
    assert config_from_dict(read_yaml(cfg.to_yaml())) == cfg
    assert load_config(REPO / "experiments" / "quickstart.yaml", ["name=017"]).name == "017"
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        cfg = load_config(path)
        assert config_from_dict(read_yaml(cfg.to_yaml())) == cfg, path.name


def test_select_lr_boosts_first_lk_epochs_of_later_phases():
    cfg = load_config(overrides=[
        "schedule.phases=[{budget: 4, epochs: 2}, {budget: 64, epochs: 3}, {budget: 128, epochs: 1}]",
        "schedule.gamma=10", "schedule.boost_epochs=2"])
    plans = list(epoch_plans(cfg.schedule, 0.01))
    assert [p.lr for p in plans] == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.1])
    assert [p.budget for p in plans] == [4, 4, 64, 64, 64, 128]
    assert [p.phase_start for p in plans] == [True, False, True, False, False, True]
    assert select_lr(1.0, 0, 0, 5.0, 3) == 1.0
    assert reset_kind(4, 128) == "deprune" and reset_kind(128, 4) == "prune"
    assert reset_kind(8, 8) is None


def test_ceilings_of_products_are_taken_of_the_decimal_values():
    # 0.55 x 100 and 50 x 1.1 are 55.00000000000001 in binary floating point.
    cfg = load_config(overrides=["train.algorithm=epsl", "train.phi=0.55", "train.batch_size=100",
                                 "compression.enabled=false"])
    assert cfg.train.shared_positions() == 55
    assert ceil_product(50, 1.1) == 55 and ceil_product(0.07, 100) == 7
    assert ceil_product(0.551, 100) == 56 and ceil_product(4e-10, 1) == 1
